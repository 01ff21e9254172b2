"""``fewstep bench`` with rows of different models: a row's ``model`` key, one load per model (its
seconds apart), settings resolved per row's model, one bench.json / bench.md / pareto.png, paired
statistics against the first row, AUP per curve, and an identity that keeps models from mixing."""

from __future__ import annotations

import json

import pytest

from fewstep.errors import ConfigError, ResultsError
from fewstep.evaluation.bench import BenchRequest, bench_configs, row_model, run_bench
from fewstep.models.loading import load_model, write_decode_defaults

WARM = {"init": "inject", "remask_threshold": 0.4, "confirm_threshold": 0.4, "reject": "edit"}


@pytest.mark.parametrize("spec, expected", [
    ("llada", ("base", "llada")),
    ("threshold:threshold=0.9,model=other", ("other", "threshold:threshold=0.9")),
    ("threshold:model=/a/b, threshold=0.8", ("/a/b", "threshold:threshold=0.8")),
    ("cad:model=x", ("x", "cad")),
])
def test_row_model(spec, expected):
    assert row_model(spec, "base") == expected


@pytest.mark.parametrize("spec", ["threshold:model=", "threshold:model"])
def test_row_model_needs_a_name(spec):
    with pytest.raises(ConfigError, match="model= needs a model name"):
        row_model(spec, "base")


@pytest.fixture()
def recommending_dlm(tmp_path, make_random_dlm):
    """A second random model whose directory recommends warm-start settings."""
    path = make_random_dlm(tmp_path / "models" / "recommending", seed=1)
    write_decode_defaults(path, {"warm_start": WARM})
    return path


def test_settings_resolve_against_each_rows_model(random_dlm_dir, recommending_dlm):
    plain, recommending = load_model(random_dlm_dir), load_model(recommending_dlm)
    specs = ("threshold:drafter=tiny-ar", f"threshold:drafter=tiny-ar,model={recommending_dlm}")
    first, second = bench_configs([plain, recommending], specs, (), 16)
    assert (first.init, first.remask_threshold, first.reject) == ("inject", 0.0, "mask")  # no recommendation
    assert (second.init, second.remask_threshold, second.confirm_threshold, second.reject) == \
        ("inject", 0.4, 0.4, "edit")  # its own model's recommendation
    assert bench_configs(plain, ("threshold:threshold=0.7",), (), 16)[0].threshold == 0.7  # one model for all


def test_one_bench_of_several_models(random_dlm_dir, recommending_dlm, tmp_path, monkeypatch):
    from fewstep.models import loading

    calls: list[str] = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda name, **kw: calls.append(str(name)) or real(name, **kw))
    other = str(recommending_dlm)
    specs = ("llada", f"threshold:threshold=0.9,model={other}", "threshold:threshold=0.9",
             f"llada:model={other}")
    req = BenchRequest(task="arith", model=str(random_dlm_dir), strategies=specs, out=str(tmp_path / "b"),
                       limit=4, batch_size=2, repeats=1)
    result = run_bench(req, progress=False)
    assert calls == [str(random_dlm_dir), other]  # each model loaded once
    assert result["models"] == [str(random_dlm_dir), other]
    assert set(result["model_load_s"]) == {str(random_dlm_dir), other} and min(result["model_load_s"].values()) > 0
    rows = result["results"]
    assert [r["model"] for r in rows] == [str(random_dlm_dir), other, str(random_dlm_dir), other]
    assert all(r["n"] == 4 for r in rows) and rows[0]["vs_first"]["accuracy_diff"] == 0
    assert set(result["aup"]) <= {str(random_dlm_dir), other}
    out = tmp_path / "b"
    assert json.loads((out / "bench.json").read_text())["results"][1]["model"] == other
    md = (out / "bench.md").read_text()
    assert "| strategy | model |" in md and "model load s" in md and (out / "pareto.png").is_file()
    ids = [[json.loads(x)["id"] for x in (out / r["label"] / "samples.jsonl").read_text().splitlines()] for r in rows]
    assert all(i == ids[0] for i in ids)  # the same problems for every row
    timed = [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines()]
    assert len(timed) == 4 * 2  # rows x batches

    again = run_bench(req, progress=False)  # resumes: nothing measured again
    assert len((out / "timing.jsonl").read_text().splitlines()) == len(timed)
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in rows]

    (recommending_dlm / "README.md").write_text("retrained\n")  # the row's model changed on disk: its checksum
    with pytest.raises(ResultsError, match="models_sha256"):
        run_bench(req, progress=False)


def test_a_bench_of_one_model_keeps_its_identity(random_dlm_dir, tmp_path):
    """Directories written before rows named models still resume: a one-model plan has no new keys."""
    req = BenchRequest(task="arith", model=str(random_dlm_dir), strategies=("llada",), out=str(tmp_path / "b"),
                       limit=2, batch_size=2, repeats=1)
    run_bench(req, progress=False)
    plan = json.loads((tmp_path / "b" / "bench_plan.json").read_text())
    assert "row_models" not in plan and "models_sha256" not in plan and isinstance(plan["model_sha256"], str)
