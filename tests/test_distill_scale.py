"""Distillation at scale, on CPU: LoRA shares the teacher's weights, bfloat16 and gradient
checkpointing, FSDP (2 processes, gloo) equals one process, accelerate configs are refused in one
line, the memory plan against measured peaks, and scripts/gpu_distill_scale.py's --tiny run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep.errors import ConfigError
from fewstep.parallel import ALONE
from fewstep.training.config import DistillConfig
from fewstep.training.distill import distill
from fewstep.training.distill_data import Dataset
from fewstep.training.distiller import Distiller
from fewstep.training.student import teacher_view

SRC = Path(__file__).resolve().parent.parent / "src"
SCRIPT = SRC.parent / "scripts" / "gpu_distill_scale.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_distill_scale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny(teacher, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), gen_length=24, steps=3, batch_size=8, lr=1e-2, warmup=1, val_size=0,
                save_every=1, threads=1)
    return DistillConfig(**{**base, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_lora_teacher_is_the_students_base_with_adapters_disabled(random_dlm_dir):
    import fewstep

    cfg = tiny(random_dlm_dir, lora_r=4, lora_targets="q_proj,v_proj")
    run = Distiller(cfg, ALONE, Dataset(cfg))
    base = run.student.get_base_model()
    assert base is run.teacher.module
    ids = {p.data_ptr() for p in run.teacher.module.parameters()}
    assert all(p.data_ptr() in ids for p in run.student.parameters())  # one copy of the weights
    run.train_step(0)
    run.train_step(1)
    x = torch.randint(3, 100, (2, 10))
    fresh = fewstep.load_model(random_dlm_dir).module
    with torch.no_grad(), teacher_view(run.student):
        shared = run.teacher.module(input_ids=x).logits
        assert torch.allclose(shared, fresh(input_ids=x).logits, atol=1e-5)  # still the teacher
    assert not torch.allclose(run.student(input_ids=x).logits, shared, atol=1e-4)  # the student moved


def test_bfloat16_and_checkpointing(tmp_path, random_dlm_dir):
    cfg = tiny(random_dlm_dir, dtype="bfloat16", steps=1)
    run = Distiller(cfg, ALONE, Dataset(cfg))
    assert next(run.teacher.module.parameters()).dtype == torch.bfloat16
    assert next(run.student.parameters()).dtype == torch.float32  # the master copy
    kw = dict(steps=2, autocast_bf16=False)
    distill(tiny(random_dlm_dir, **kw), tmp_path / "plain", progress=False)
    distill(tiny(random_dlm_dir, gradient_checkpointing=True, **kw), tmp_path / "ckpt", progress=False)
    for a, b in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                    rel=1e-4)


@pytest.mark.parametrize("env,match", [({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed"),
                                       ({"ACCELERATE_USE_FSDP": "true"}, "--sharding fsdp")])
def test_accelerate_configs_are_refused_in_one_line(tmp_path, random_dlm_dir, monkeypatch, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        distill(tiny(random_dlm_dir), tmp_path, progress=False)


def test_fsdp_refuses_what_it_does_not_shard(tmp_path, random_dlm_dir):
    with pytest.raises(ConfigError, match="LoRA"):
        distill(tiny(random_dlm_dir, sharding="fsdp", lora_r=4), tmp_path, progress=False)


@pytest.mark.slow
def test_fsdp_two_processes_equal_one(tmp_path, random_dlm_dir):
    args = ["distill", "--teacher", str(random_dlm_dir), "--gen-length", "24", "--steps", "3", "--batch-size", "6",
            "--grad-accum", "2", "--lr", "1e-3", "--warmup", "1", "--val-size", "5", "--val-every", "3",
            "--no-progress", "--autocast-bf16", "false"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fewstep.cli", *args, "--sharding", "fsdp", "--out", str(tmp_path / "fsdp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from fewstep.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # one process: this one, no second start-up
    fsdp, alone = metrics(tmp_path / "fsdp"), metrics(tmp_path / "one")
    assert len(fsdp) == len(alone) == 4
    for a, b in zip(fsdp, alone):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4)
    wa, wb = (load_file(tmp_path / d / "last" / "model.safetensors") for d in ("fsdp", "one"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ca, cb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("fsdp", "one"))
    assert ca["student"].keys() == cb["student"].keys() and ca["state"]["step"] == 3
    assert json.loads((tmp_path / "fsdp" / "run.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_memory_plan_and_lora_peak_against_measurements(tmp_path):
    """A 78M-parameter LLaDA-layout teacher (float32): the plan is within 15% of the measured peak, and
    a LoRA run peaks at no more than 1.6x the weight bytes above the imports."""
    from fewstep.training.plan import plan

    g = _script()
    small = g.write_random_llada(tmp_path / "small", **g.TINY)
    big = g.write_random_llada(tmp_path / "big", d_model=768, n_heads=12, n_kv_heads=12, n_layers=11,
                               mlp_hidden_size=2048)
    conf = json.loads((big / "config.json").read_text())
    args = ["distill", "--teacher", str(big), "--steps", "1", "--batch-size", "4", "--gen-length", "24",
            "--val-size", "0", "--no-progress", "--lr", "1e-5", "--autocast-bf16", "false"]
    full = g.peak_above_import(args, tmp_path / "full", small)
    p = plan(conf, DistillConfig(batch_size=4, gen_length=24, autocast_bf16=False), 1, 40)
    assert abs(full / p["per_device_bytes"] - 1) < 0.15, (full, p["parts"])
    lora = g.peak_above_import([*args, "--lora-r", "8", "--gradient-checkpointing", "true"], tmp_path / "lora", small)
    weight_bytes = 4 * p["parameters"]
    # Measured 1.44x (3.7x with a deep-copied student, 1.8-1.9x while the export held every merged weight
    # at once and the step's freed heap stayed with the allocator): the base weights once, the step, and
    # one merged weight at a time during the export.
    assert lora <= 1.6 * weight_bytes, lora / weight_bytes


def test_a_streamed_safetensors_file_reads_back_exactly(tmp_path):
    from fewstep.training.student import save_streamed

    tensors = {"a.weight": torch.randn(3, 5), "b": torch.arange(7.0), "c": torch.randn(2, 2, 2), "d": torch.randn(())}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        save_streamed(tmp_path / "m.safetensors", lambda: iter(tensors.items()), dtype)
        back = load_file(tmp_path / "m.safetensors")
        assert set(back) == set(tensors)
        assert all(back[k].dtype == dtype and torch.equal(back[k], v.to(dtype)) for k, v in tensors.items())


@pytest.mark.slow
def test_gpu_script_tiny_run(tmp_path, capsys):
    assert _script().main(["--tiny", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for mode in ("lora", "fsdp"):
        assert out[mode]["peak_bytes"] > 0 and out[mode]["plan_bytes"] > 0 and out[mode]["step_s"] > 0
    assert out["fsdp"]["processes"] == 2
