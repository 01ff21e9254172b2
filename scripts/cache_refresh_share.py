"""How many of a decode's row-forwards are cache refreshes (the whole sequence) and how many are
window forwards, and the wall-clock gain the split allows.

    python scripts/cache_refresh_share.py --n 100 --strategy "threshold:threshold=0.9,cache=dual" \
        --set gen_length=64 --set block_length=8 --set early_stop=true

A refresh costs a whole forward, a window forward about window / sequence of one (measured here
too, as the ratio of positions run); with a refresh share f and that ratio r the gain over no cache
is at most 1 / (f + (1 - f) r).
"""

from __future__ import annotations

import argparse

import fewstep
import fewstep.decoding.cache as cache_module
from fewstep.config import override, parse_strategy_spec
from fewstep.tasks import arith


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-dlm")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--strategy", default="threshold:threshold=0.9,cache=dual")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    model = fewstep.load_model(args.model)
    cfg = override(parse_strategy_spec(args.strategy), args.set)
    counts = {"refresh_rows": 0, "window_rows": 0, "refresh_positions": 0, "window_positions": 0}
    inner = cache_module.window_logits

    def counting(model, ids, att, guide, window, cfg_scale, embeds=None, cache=None, cache_rows=None,
                 cache_window=None):
        kind = "refresh" if cache_window is None else "window"
        counts[f"{kind}_rows"] += ids.shape[0]
        span = ids.shape[1] if cache_window is None else cache_window.stop - cache_window.start
        counts[f"{kind}_positions"] += ids.shape[0] * span
        return inner(model, ids, att, guide, window, cfg_scale, embeds, cache, cache_rows, cache_window)

    cache_module.window_logits = counting  # type: ignore[assignment]
    prompts = [e.prompt for e in arith.ArithTask().examples()[: args.n]]
    for i in range(0, len(prompts), args.batch_size):
        fewstep.generate(model, prompts[i: i + args.batch_size], cfg)
    rows = counts["refresh_rows"] + counts["window_rows"]
    f = counts["refresh_rows"] / rows
    r = (counts["window_positions"] / counts["window_rows"]) / (counts["refresh_positions"] / counts["refresh_rows"])
    print(f"{args.strategy} {' '.join(args.set)}: {rows} row-forwards, refresh share f = {f:.2f}, "
          f"window / sequence r = {r:.3f}, gain bound 1 / (f + (1 - f) r) = {1 / (f + (1 - f) * r):.2f}x")


if __name__ == "__main__":
    main()
