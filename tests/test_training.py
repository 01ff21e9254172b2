"""Training is seeded and resumable: an interrupted run ends where an uninterrupted one does."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

import fewstep
from fewstep.errors import ConfigError
from fewstep.training.config import TrainConfig
from fewstep.training.loop import train

TINY = dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, batch_size=8, save_every=1, snapshot_every=2,
            log_every=1, warmup=2)


@pytest.mark.parametrize("kind", ["dlm", "ar"])
def test_resume_matches_uninterrupted(tmp_path, kind):
    full = train(TrainConfig(kind=kind, steps=4, **TINY), tmp_path / "full", progress=False)
    half = TrainConfig(kind=kind, steps=4, **TINY)
    # Interrupt after 2 steps by training a 2-step run into the same directory layout, then resume.
    part = tmp_path / "part"
    train(TrainConfig(kind=kind, steps=2, **TINY), part, progress=False)
    (part / "train_config.json").write_text(json.dumps(asdict(half)))  # as if the 4-step run had stopped
    (part / "train_log.jsonl").unlink()
    resumed = train(half, part, progress=False)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (tmp_path / "full" / "snapshots" / "step_2" / "config.json").is_file()
    model = fewstep.load_model(full)
    assert model.kind == ("diffusion" if kind == "dlm" else "causal")


def test_refuses_other_config_in_same_dir(tmp_path):
    train(TrainConfig(steps=1, **TINY), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        train(TrainConfig(steps=1, lr=0.01, **TINY), tmp_path, progress=False)


@pytest.mark.parametrize("kw", [dict(kind="gan"), dict(steps=0), dict(d_model=30, n_heads=4), dict(lr=2.0)])
def test_invalid_train_config(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_stop_at_gives_the_uninterrupted_model_and_continues(tmp_path):
    cfg = TrainConfig(steps=4, **TINY)
    full = train(cfg, tmp_path / "full", progress=False)
    stopped = train(cfg, tmp_path / "run", progress=False, stop_at=3)
    assert stopped.name == "step_3"
    a = load_file(tmp_path / "full" / "snapshots" / "step_2" / "model.safetensors")
    b = load_file(tmp_path / "run" / "snapshots" / "step_2" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = train(cfg, tmp_path / "run", progress=False)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="stop_at"):
        train(cfg, tmp_path / "x", progress=False, stop_at=5)


def test_init_from_a_trained_model(tmp_path):
    first = train(TrainConfig(steps=2, **TINY), tmp_path / "a", progress=False)
    cont = TrainConfig(steps=1, init_from=str(first), **TINY)
    second = train(cont, tmp_path / "b", progress=False)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="do not fit"):
        train(TrainConfig(steps=1, init_from=str(first), **{**TINY, "d_model": 64}), tmp_path / "c", progress=False)
