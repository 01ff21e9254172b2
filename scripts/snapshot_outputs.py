"""Decode the full arith test set with a fixed list of settings and write every row's generation
ids and NFE to a JSON file, so two commits of the engine can be compared output for output:

    python scripts/snapshot_outputs.py --out before.json     # on the old commit
    python scripts/snapshot_outputs.py --out after.json      # on the new one
    python scripts/snapshot_outputs.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import sys

SETTINGS = [
    "strategy=llada",
    "strategy=llada,steps=6",
    "strategy=llada,steps=8,remasking=random",
    "strategy=llada,steps=8,temperature=0.5,seed=3",
    "strategy=threshold,threshold=0.9",
    "strategy=threshold,threshold=0.8,remasking=margin",
    "strategy=factor,factor=1.0",
    "strategy=cad,tau=0.9,max_steps_per_block=4,eos_min_progress=0.5",
    "strategy=threshold,threshold=0.7,block_length=8,early_stop=true",
    "strategy=llada,steps=12,remasking=entropy,eos_confidence=last,eos_logit_penalty=1.0",
    "strategy=llada,steps=6,cfg_scale=0.5",
    "strategy=factor_prefix,factor=1.0",
    "strategy=eb",
    "strategy=block_threshold",
    "strategy=block_threshold,editing_threshold=0.5,threshold=0.8",
    "strategy=threshold,threshold=0.9,block_length=8,cache=dual",
    "strategy=llada,steps=12,block_length=8,cache=prefix,cache_refresh=2",
]


def snapshot(limit: int | None, batch_size: int) -> dict[str, list[list[int]]]:
    import torch

    from fewstep import DecodeConfig, generate, load_model
    from fewstep.config import override
    from fewstep.tasks.base import get_task

    torch.set_num_threads(1)
    model = load_model("tiny-dlm")
    prompts = [e.prompt for e in get_task("arith").examples()][:limit]
    out = {}
    for spec in SETTINGS:
        cfg = override(DecodeConfig(), spec.split(","))
        rows = []
        for i in range(0, len(prompts), batch_size):
            rows += [r.token_ids + [r.nfe] for r in generate(model, prompts[i:i + batch_size], cfg)]
        out[spec] = rows
        print(spec, len(rows), file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        a, b = (json.load(open(p)) for p in args.compare)
        bad = 0
        for spec in a:
            diff = sum(x != y for x, y in zip(a[spec], b.get(spec, [])))
            missing = len(a[spec]) != len(b.get(spec, []))
            print(f"{spec}: {diff} rows differ{' (row count differs)' if missing else ''}")
            bad += diff + missing
        return 1 if bad else 0
    json.dump(snapshot(args.limit, args.batch_size), open(args.out, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
