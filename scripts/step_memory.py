"""A decode step's cost: peak memory at a real model's vocabulary, and the engine's own time per
step next to Fast-dLLM's reference loop.

1. memory: a random LLaDA-layout model with LLaDA-8B's vocabulary (126,464) and a tiny hidden size
   decodes gen 256 / block 32 / batch 8 with ``threshold``; reported: the peak resident memory the
   decode adds (CPU: peak RSS above the level before decoding; CUDA: peak allocated) and seconds
   per step, over the first ``--steps`` steps. The model is tiny, so the figures are the engine's:
   logits, softmax, candidates, snapshots.
2. overhead: tiny-dlm at batch 1 on one thread; the engine's own time per step (wall time minus
   the time inside the model's forward, measured with forward hooks), for fewstep's loop and for a
   transcription of Fast-dLLM's reference loop (``generate`` with a threshold, no cache: a forward
   over the sequence, float64 softmax over every position, a per-row top-k and a per-position
   threshold scan) on the same prompts and model.

Runs against whichever fewstep is importable, so the same command measures two commits:

    python scripts/step_memory.py                                  # this checkout
    PYTHONPATH=/path/to/old/checkout/src python scripts/step_memory.py
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import resource
import sys
import time
from pathlib import Path

import torch

VOCAB = 126_464


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _events(model, prompts, cfg):
    from fewstep.decoding.loop import decode

    return decode(model, prompts, cfg)  # every step's event, in both old and new engines


def memory(device: str, steps: int, d_model: int) -> dict:
    import fewstep
    from fewstep.models.adapter import DiffusionModel
    from fewstep.models.llada import LLaDAConfig, LLaDAModel

    torch.manual_seed(0)
    cfg = LLaDAConfig(d_model=d_model, n_heads=2, n_kv_heads=2, n_layers=2, mlp_hidden_size=2 * d_model,
                      vocab_size=VOCAB, embedding_size=VOCAB, mask_token_id=126_336, eos_token_id=126_081,
                      pad_token_id=126_081, max_sequence_length=4096)
    module = LLaDAModel(cfg).to(device).eval()
    model = DiffusionModel(module=module, tokenizer=None, name="random-126k", eos_id=cfg.eos_token_id,
                           pad_id=cfg.pad_token_id, max_length=4096, mask_id=cfg.mask_token_id)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(100, 120_000, (32 + 3 * i,), generator=g).tolist() for i in range(8)]
    dcfg = fewstep.DecodeConfig(strategy="threshold", threshold=0.9, gen_length=256, block_length=32)
    with torch.no_grad():
        for i, _ in enumerate(_events(model, prompts, dcfg)):  # warm-up
            if i == 0:
                break
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        else:
            before = _rss_mib()
            exact = _reset_peak()
        t0 = time.perf_counter()
        n = 0
        for n, _ in enumerate(_events(model, prompts, dcfg), 1):
            if n >= steps:
                break
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_mib()
    out = {"vocab": VOCAB, "d_model": d_model, "batch": 8, "gen_length": 256, "block_length": 32, "steps": n,
           "peak_extra_mib": round(peak - before, 1), "s_per_step": round(wall / n, 4), "device": device}
    if not device.startswith("cuda"):
        out["peak_is_exact"] = exact
    return out


def reference_threshold(module, prompt, mask_id, gen_length, block_length, threshold):
    """Fast-dLLM's ``generate`` with a threshold and no cache, for one prompt, as the reference
    loop is written (full-sequence float64 softmax, per-row top-k, per-position threshold scan)."""
    x = torch.cat([torch.tensor(prompt), torch.full((gen_length,), mask_id)])[None]
    p = len(prompt)
    steps = 0
    for blk in range(gen_length // block_length):
        start, end = p + blk * block_length, p + (blk + 1) * block_length
        while True:
            steps += 1
            mask_index = x == mask_id
            logits = module(input_ids=x).logits
            mask_index[:, end:] = 0
            x0 = torch.argmax(logits, dim=-1)
            prob = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.squeeze(torch.gather(prob, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            k_all = mask_index.sum(dim=1, keepdim=True)
            for j in range(confidence.shape[0]):
                _, select = torch.topk(confidence[j], k=int(k_all[j]))
                transfer[j, select] = True
                for k in range(1, int(k_all[j])):
                    if confidence[j, select[k]] < threshold:
                        transfer[j, select[k]] = False
            x[transfer] = x0[transfer]
            if (x[:, start:end] == mask_id).sum() == 0:
                break
    return x[0, p:].tolist(), steps


def overhead(n: int, repeats: int) -> dict:
    import fewstep
    from fewstep.tasks import arith

    torch.set_num_threads(1)
    model = fewstep.load_model("tiny-dlm")
    prompts = [model.encode_prompt(e.question) for e in arith.test_set()[:n]]
    cfg = fewstep.DecodeConfig(strategy="threshold", threshold=0.9)
    forward_s = [0.0]

    def pre(mod, args, kwargs):
        forward_s.append(time.perf_counter())

    def post(mod, args, kwargs, out):
        forward_s[0] += time.perf_counter() - forward_s.pop()

    h1 = model.module.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.module.register_forward_hook(post, with_kwargs=True)

    def timed(fn):
        forward_s[:] = [0.0]
        t0 = time.perf_counter()
        steps, same = fn()
        wall = time.perf_counter() - t0
        return round((wall - forward_s[0]) / steps * 1e3, 3), steps, same

    with torch.no_grad():
        ours_out: list = []

        from collections import deque

        from fewstep.decoding.loop import decode

        quiet = {"snapshots": False} if "snapshots" in inspect.signature(decode).parameters else {}

        def ours():  # the engine as generate() runs it, without turning tokens into text
            ours_out[:] = [deque(decode(model, [p], cfg, **quiet), maxlen=1)[0] for p in prompts]
            return sum(int(e.nfe[0]) for e in ours_out), True

        ref_out: list = []

        def ref():
            ref_out[:] = [reference_threshold(model.module, p, model.mask_id, 24, 24, 0.9) for p in prompts]
            return sum(s for _, s in ref_out), True

        cached = "cache" in {f.name for f in dataclasses.fields(fewstep.DecodeConfig)}
        dual_cfg = dataclasses.replace(cfg, cache="dual") if cached else cfg

        def ours_dual():  # the same with the key/value cache on (its bookkeeping is engine time)
            events = [deque(decode(model, [p], dual_cfg, **quiet), maxlen=1)[0] for p in prompts]
            return sum(int(e.nfe[0]) for e in events), True

        ours() and ref()  # warm-up
        ours_ms = ref_ms = dual_ms = float("inf")
        for _ in range(repeats):  # alternating, so both see the same moments of a shared machine
            a, ours_steps, _ = timed(ours)
            r, ref_steps, _ = timed(ref)
            ours_ms, ref_ms = min(ours_ms, a), min(ref_ms, r)
            if cached:
                dual_ms = min(dual_ms, timed(ours_dual)[0])
    h1.remove()
    h2.remove()
    same = [e.canvas[0].tolist() for e in ours_out] == [t for t, _ in ref_out]
    return {"prompts": n, "strategy": "threshold 0.9", "ours_ms_per_step": ours_ms, "reference_ms_per_step": ref_ms,
            "ours_cache_dual_ms_per_step": dual_ms if cached else None,
            "steps": [ours_steps, ref_steps], "same_tokens": same, "repeats": repeats,
            "note": "best of the repeats, the two loops alternating"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6, help="steps timed in the memory measurement")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=100, help="prompts in the overhead measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["memory", "overhead"], default=None)
    args = ap.parse_args()
    import fewstep.decoding.loop as loop

    result = {"engine": "snapshots optional" if "snapshots" in inspect.signature(loop.decode).parameters else "old"}
    if args.only in (None, "memory"):
        result["memory"] = memory(args.device, args.steps, args.d_model)
    if args.only in (None, "overhead"):
        result["overhead"] = overhead(args.prompts, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
