"""Decode speed of a LLaDA-8B-shaped model, with and without the key/value cache.

Builds a randomly initialised model with the published LLaDA-8B configuration's sizes (``--size
8b``: d_model 4096, 32 layers, 32 heads, MLP 12288, vocabulary 126,464) in bfloat16, and decodes
random prompts with each strategy and cache mode at each batch size; reports, per run, the
forwards, the mean latency of a forward (wall time / forwards, the engine's own work included),
generated tokens per second, and the peak GPU memory. With random weights no strategy is
confident, so ``threshold`` and ``cad`` commit about one token per step like ``llada``: the figures
measure the cost of a step, not a strategy's step savings (those are measured on trained models).

    python scripts/gpu_bench.py --device cuda                     # the 8B shape, batch 1 and 16
    python scripts/gpu_bench.py --size tiny --device cpu --dtype float32 --gen 16 --block 8  # smoke

Results: one JSON line per run on stdout and all of them in ``--out`` (a JSON file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

SIZES = {
    # LLaDA-8B's published config (GSAI-ML/LLaDA-8B-Instruct config.json)
    "8b": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
               embedding_size=126464, rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081,
               pad_token_id=126081, max_sequence_length=4096),
    "tiny": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=512,
                 embedding_size=512, mask_token_id=1, eos_token_id=2, pad_token_id=0, max_sequence_length=1024),
}
STRATEGY_PARAMS = {"llada": {}, "threshold": {"threshold": 0.9}, "cad": {"tau": 0.9}}


def build_model(size: str, device: str, dtype: torch.dtype):
    """A random LLaDA-layout model of ``size`` on ``device``, wrapped for the decode loop."""
    from fewstep.models.adapter import DiffusionModel
    from fewstep.models.llada import LLaDAConfig, LLaDAModel

    cfg = LLaDAConfig(**SIZES[size])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = LLaDAModel(cfg).eval()
            for p in module.parameters():
                if p.dim() > 1:
                    torch.nn.init.normal_(p, std=0.02)
    finally:
        torch.set_default_dtype(old)
    return DiffusionModel(module, None, f"random-llada-{size}", eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id,
                          max_length=cfg.max_sequence_length, mask_id=cfg.mask_token_id)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(model, strategy: str, cache: str, batch: int, args) -> dict[str, Any]:
    from fewstep.config import DecodeConfig
    from fewstep.decoding.loop import decode

    steps = {"steps": args.gen} if strategy == "llada" else {}
    cfg = DecodeConfig(strategy=strategy, gen_length=args.gen, block_length=args.block, cache=cache,
                       **steps, **STRATEGY_PARAMS[strategy])
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, min(SIZES[args.size]["vocab_size"], 30000), (batch, args.prompt), generator=g)
    prompts = torch.where(ids == model.mask_id, ids + 1, ids).tolist()  # no mask token in a prompt
    forwards = [0]
    hook = model.module.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    try:
        with torch.no_grad():
            for _ in decode(model, prompts[:1], DecodeConfig(strategy=strategy, gen_length=args.block,
                                                            block_length=args.block, cache=cache,
                                                            **({"steps": 4} if strategy == "llada" else {}),
                                                            **STRATEGY_PARAMS[strategy]), snapshots=False):
                pass  # warm-up (kernels, allocator), untimed
            forwards[0] = 0
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(args.device)
            t0 = time.perf_counter()
            events = list(decode(model, prompts, cfg, snapshots=False))  # the last event only
            _sync(args.device)
            wall = time.perf_counter() - t0
    finally:
        hook.remove()
    last = events[-1]
    assert last.done
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    return {"size": args.size, "device": args.device, "dtype": args.dtype, "batch": batch, "strategy": strategy,
            "cache": cache, "gen_length": args.gen, "block_length": args.block, "prompt_tokens": args.prompt,
            "nfe_mean": float(last.nfe.float().mean()), "forwards": forwards[0], "wall_s": wall,
            "ms_per_forward": 1000 * wall / max(forwards[0], 1), "tokens_per_s": batch * args.gen / wall,
            "peak_gpu_gib": peak}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--batches", default="1,16")
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens (random ids)")
    p.add_argument("--strategies", default="llada,threshold,cad")
    p.add_argument("--caches", default="none,prefix,dual")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_bench.json"))
    args = p.parse_args(argv)
    if args.gen < 1 or args.block < 1 or args.gen % args.block or args.prompt < 1:
        p.error("--gen and --block must be positive, --gen a multiple of --block, --prompt positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: error: no CUDA device here (use --device cpu --size tiny for a smoke run)",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build_model(args.size, args.device, getattr(torch, args.dtype))
    rows = []
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    for batch in (int(b) for b in args.batches.split(",")):
        for strategy in args.strategies.split(","):
            for cache in args.caches.split(","):
                row = {"device_name": device_name, **run_one(model, strategy, cache, batch, args)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
