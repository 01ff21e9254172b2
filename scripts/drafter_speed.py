"""Drafting seconds of the warm-start drafter: the lean loop against transformers' ``generate()``.

Drafts the first N arith test problems in batches, with each method alternately, and prints the
best (least disturbed) of R repeats per batch size and method, plus the one-time load seconds.
Run with one thread, e.g.::

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/drafter_speed.py --n 100 --batch-sizes 50 100
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", default="tiny-ar")
    ap.add_argument("--n", type=int, default=100, help="arith test problems")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=0, help="drafter budget (0: its default for arith)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from fewstep.drafting.drafter import default_budget, draft, load_drafter, load_seconds
    from fewstep.tasks import arith

    drafter = load_drafter(args.drafter, device=args.device)
    task = arith.ArithTask()
    prompts = [e.prompt for e in task.examples()[: args.n]]
    budget = args.max_tokens or default_budget(drafter, task.default_gen_length)
    print(f"drafter {args.drafter} on {args.device}, {torch.get_num_threads()} thread(s): load "
          f"{load_seconds(args.drafter, args.device):.2f}s once (transformers import included); "
          f"{len(prompts)} problems, budget {budget} tokens")
    draft(drafter, prompts[: min(args.batch_sizes)], budget, method="generate")  # warm-up, untimed
    draft(drafter, prompts[: min(args.batch_sizes)], budget, method="lean")
    for bs in args.batch_sizes:
        best = {"generate": float("inf"), "lean": float("inf")}
        tokens = {}
        for _ in range(args.repeats):
            for method in best:  # alternating, so drift of the machine hits both alike
                t0 = time.perf_counter()
                drafts = [d for i in range(0, len(prompts), bs)
                          for d in draft(drafter, prompts[i: i + bs], budget, method=method)]
                best[method] = min(best[method], time.perf_counter() - t0)
                tokens[method] = [d.token_ids for d in drafts]
        same = tokens["generate"] == tokens["lean"]
        print(f"batch {bs:4d}: generate {best['generate']:.3f}s  lean {best['lean']:.3f}s  "
              f"({best['generate'] / best['lean']:.1f}x; identical drafts: {same})")


if __name__ == "__main__":
    main()
