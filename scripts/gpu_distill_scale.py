"""One distillation step at LLaDA-8B's shape with random weights, against ``fewstep distill --plan``.

Writes a random-weight LLaDA-layout teacher (LLaDA-8B-Instruct's widths and vocabulary in bfloat16;
``--tiny``: a small float32 one that runs on CPU), then runs ``fewstep distill`` for two steps:

- ``lora``: LoRA r 8, bfloat16, gradient checkpointing, in this process on one device;
- ``fsdp``: full fine-tuning, bfloat16, gradient checkpointing, ``--sharding fsdp`` over the GPUs
  present (``--tiny``: 2 processes on CPU, gloo), under torchrun.

Prints one JSON object: per mode the peak memory of a process (CUDA: ``max_memory_reserved``; CPU:
peak RSS above the process's memory after its imports), the plan's bytes, their ratio and the time of
the second step. Usage: ``python scripts/gpu_distill_scale.py [--tiny] [--modes lora,fsdp] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

SRC = Path(__file__).resolve().parent.parent / "src"
LLADA_8B = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab=126464)
TINY = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab=0)


def write_random_llada(path: Path, d_model: int, n_heads: int, n_kv_heads: int, n_layers: int,
                       mlp_hidden_size: int, vocab: int = 0, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A random-weight LLaDA-layout teacher directory with the lab tokenizer (arith task); ``vocab`` > 0
    widens the embeddings and head to that many rows (the tokenizer's ids stay below its size)."""
    from safetensors.torch import save_file

    from fewstep.models.llada import LLaDAConfig, LLaDAModel
    from fewstep.tasks import arith
    from fewstep.training import tokenizers

    tok = tokenizers.word_level(arith.vocabulary())
    rows = max(vocab, len(tok))
    cfg = LLaDAConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, n_layers=n_layers,
                      mlp_hidden_size=mlp_hidden_size, vocab_size=rows, embedding_size=rows,
                      mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      max_sequence_length=4096, rope_theta=500000.0)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dim()) for k, v in LLaDAModel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(s, generator=gen) * 0.02 if d >= 2 else torch.ones(s)).to(dtype)
             for k, (s, d) in shapes.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    save_file(state, path / "model.safetensors")
    tok.save_pretrained(path)
    return path


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


MEASURE = """
import json, sys
from pathlib import Path
sys.argv = ["fewstep"]
import matplotlib.pyplot, peft, tqdm, safetensors.torch  # what a run imports on its way, before the baseline
sys.path.insert(0, {script_dir!r})
import gpu_distill_scale as g
from fewstep.cli import main
main({warmup!r})  # a first tiny run: lazy imports and one-time allocations happen here
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size (VmHWM)
base = g.rss_bytes()
assert main({args!r}) == 0
hwm = [int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
print(json.dumps({{"peak_bytes": hwm - base}}))
"""


def peak_above_import(args: list[str], out: Path, warm_teacher: Path) -> int:
    """Peak resident memory of ``fewstep distill ARGS --out OUT`` in a fresh process, above that
    process's memory after its imports and a warm-up run (Linux: VmHWM, reset through clear_refs)."""
    warmup = ["distill", "--teacher", str(warm_teacher), "--steps", "1", "--batch-size", "2", "--gen-length", "24",
              "--val-size", "0", "--no-progress", "--lr", "1e-5", "--out", str(out) + "-warmup"]
    code = MEASURE.format(script_dir=str(Path(__file__).parent), warmup=warmup, args=[*args, "--out", str(out)])
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def mode_args(mode: str, tiny: bool) -> list[str]:
    dtype = "float32" if tiny else "bfloat16"
    common = ["--dtype", dtype, "--gradient-checkpointing", "true", "--save-dtype", dtype]
    return common + (["--lora-r", "8"] if mode == "lora" else ["--sharding", "fsdp"])


def run_args(teacher: Path, tiny: bool, batch: int, gen: int) -> list[str]:
    device = "cpu" if tiny else "cuda"
    return ["distill", "--teacher", str(teacher), "--steps", "2", "--batch-size", str(batch), "--gen-length", str(gen),
            "--lr", "1e-5", "--warmup", "1", "--val-size", "0", "--save-every", "100", "--no-progress",
            "--device", device, "--autocast-bf16", "false" if tiny else "true"]


def measured_run(args: list[str], out: Path) -> dict[str, Any]:
    """Run ``fewstep distill`` in this process; its peak memory above the imports, and the step time."""
    from fewstep.cli import main

    cuda = torch.cuda.is_available() and "cuda" in args
    base = rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    code = main([*args, "--out", str(out)])
    if code:
        raise SystemExit(f"fewstep distill failed ({code})")
    peak = torch.cuda.max_memory_reserved() if cuda else peak_rss_bytes() - base
    return {"peak_bytes": int(peak), **_step_time(out)}


def _step_time(out: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return {"step_s": rows[-1]["elapsed_s"] - rows[-2]["elapsed_s"] if len(rows) > 1 else None}


def child(argv: list[str]) -> int:
    """One process of a torchrun launch: run and write this rank's peak to OUT/peak-RANK.json."""
    out = Path(argv[argv.index("--out") + 1])
    result = measured_run([a for i, a in enumerate(argv) if a != "--out" and argv[i - 1] != "--out"], out)
    (out / f"peak-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
    return 0


def launched_run(args: list[str], out: Path, procs: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           __file__, "--child", *args, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"torchrun failed: {done.stderr[-2000:]}")
    peaks = [json.loads((out / f"peak-{r}.json").read_text()) for r in range(procs)]
    return {"peak_bytes": max(p["peak_bytes"] for p in peaks), **_step_time(out)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a small float32 model on CPU (the smoke test)")
    p.add_argument("--modes", default="lora,fsdp")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gen-length", type=int, default=None, help="default 256 (--tiny: 24)")
    p.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    a = p.parse_args(argv)
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_distill_scale: no CUDA device here; use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    gen = a.gen_length or (24 if a.tiny else 256)
    work = Path(a.out or tempfile.mkdtemp(prefix="distill-scale-"))
    shape = TINY if a.tiny else LLADA_8B
    teacher = write_random_llada(work / "teacher", **shape, dtype=torch.float32 if a.tiny else torch.bfloat16)
    from fewstep.training.config import DistillConfig
    from fewstep.training.plan import plan_for

    results: dict[str, Any] = {"shape": shape, "batch_size": a.batch_size, "gen_length": gen}
    for mode in a.modes.split(","):
        args = run_args(teacher, a.tiny, a.batch_size, gen) + mode_args(mode, a.tiny)
        procs = 1 if mode == "lora" else (2 if a.tiny else max(torch.cuda.device_count(), 1))
        run = measured_run(args, work / mode) if procs == 1 else launched_run(args, work / mode, procs)
        cfg = json.loads((work / mode / "distill_config.json").read_text())
        prompt = 32 if a.tiny else 256
        planned = plan_for(DistillConfig(**cfg), procs, prompt)["per_device_bytes"]
        results[mode] = {**run, "processes": procs, "plan_bytes": planned,
                         "peak_over_plan": run["peak_bytes"] / planned}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
