"""Batch invariance at temperature 0: each prompt decoded alone and in ragged batches gives the
same tokens and the same NFE, for every strategy.

    python scripts/check_batch_invariance.py --model tiny-dlm --n 200 --batch-size 32

Prompts are shuffled before batching so each batch mixes prompt lengths (ragged, left-padded).
Exits 1 and lists the differing prompts if any differ.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import fewstep
from fewstep.config import parse_strategy_spec
from fewstep.tasks import arith

DEFAULT_STRATEGIES = "llada;llada:steps=6;threshold:threshold=0.9;factor:factor=1.0;cad:tau=0.9,early_stop=true"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-dlm")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    args = ap.parse_args()

    model = fewstep.load_model(args.model)
    questions = [p.question for p in arith.test_set()[: args.n]]
    order = list(range(len(questions)))
    random.Random(0).shuffle(order)
    failures = 0
    for spec in args.strategies.split(";"):
        cfg = parse_strategy_spec(spec)
        t0 = time.perf_counter()
        alone = [fewstep.generate(model, [q], cfg)[0] for q in questions]
        batched: dict[int, fewstep.GenerationResult] = {}
        for i in range(0, len(order), args.batch_size):
            idx = order[i: i + args.batch_size]
            for j, r in zip(idx, fewstep.generate(model, [questions[k] for k in idx], cfg)):
                batched[j] = r
        bad = [i for i in range(len(questions))
               if (alone[i].token_ids, alone[i].nfe) != (batched[i].token_ids, batched[i].nfe)]
        failures += len(bad)
        lengths = {len(model.encode_prompt(q)) for q in questions}
        print(f"{spec:45s} {len(questions)} prompts (lengths {min(lengths)}-{max(lengths)} tokens), "
              f"batches of {args.batch_size}: {len(questions) - len(bad)} identical, {len(bad)} differ "
              f"({time.perf_counter() - t0:.1f}s)")
        for i in bad[:5]:
            print(f"  prompt {i}: alone {alone[i].text!r} nfe {alone[i].nfe} | batched {batched[i].text!r} "
                  f"nfe {batched[i].nfe}")
    print("batch invariance: " + ("holds" if failures == 0 else f"{failures} differences"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
