"""scripts/gpu_bench.py: a CPU smoke run at a tiny size (the 8B shape needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_run_reports_every_strategy_and_cache_mode(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "gpu.json"
    assert bench.main(["--size", "tiny", "--device", "cpu", "--dtype", "float32", "--gen", "16", "--block", "8",
                       "--prompt", "12", "--batches", "1,2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    combos = {(r["batch"], r["strategy"], r["cache"]) for r in rows}
    caches = ("none", "prefix", "dual")
    assert combos == {(b, s, c) for b in (1, 2) for s in ("llada", "threshold", "cad") for c in caches}
    for r in rows:
        assert r["forwards"] >= 2 and r["tokens_per_s"] > 0 and r["ms_per_forward"] > 0
        assert r["nfe_mean"] == 16  # random weights: one token per step
    assert len(capsys.readouterr().out.strip().splitlines()) == len(rows)


def test_8b_shape_is_the_published_config():
    sizes = _load().SIZES["8b"]
    assert (sizes["d_model"], sizes["n_layers"], sizes["n_heads"], sizes["mlp_hidden_size"],
            sizes["vocab_size"]) == (4096, 32, 32, 12288, 126464)


def test_without_cuda_it_says_so(capsys):
    if torch.cuda.is_available():
        return
    assert _load().main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
