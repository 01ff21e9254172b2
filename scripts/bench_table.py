"""A bench's rows as the Markdown table the docs show: accuracy with its interval, the paired
difference against the first row (Newcombe), McNemar p, forwards and their ratio, the drafter's
forwards and seconds, the diffusion model's seconds and the end-to-end wall ratio.

    python scripts/bench_table.py runs/results/warmstart-pays/arith/tiny-dlm-edit-threshold/bench.json \
        --labels "no warm start;--drafter tiny-ar alone;..."
"""

from __future__ import annotations

import argparse
import json


def row(label: str, r: dict, first: bool) -> str:
    lo, hi = r["accuracy_ci95"]
    v = r["vs_first"]
    diff = "" if first else (f"{v['accuracy_diff'] * 100:+.1f} [{v['accuracy_diff_ci95'][0] * 100:+.1f}, "
                             f"{v['accuracy_diff_ci95'][1] * 100:+.1f}]")
    p = "" if first else ("<0.001" if v["mcnemar_p"] < 0.001 else f"{v['mcnemar_p']:.2g}")
    return (f"| {label} | {r['accuracy'] * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}] | {diff} | {p} | "
            f"{r['nfe_mean']:.2f} | {v['nfe_ratio']:.2f}x | {r['drafter_nfe_mean']:.1f} | {r['drafter_s']:.1f} | "
            f"{r['model_s']:.1f} | {v['wall_ratio']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json")
    ap.add_argument("--labels", default="", help="one label per row, ';'-separated (default: the specs)")
    args = ap.parse_args()
    results = json.load(open(args.bench_json))["results"]
    labels = [x.strip() for x in args.labels.split(";")] if args.labels else []
    print("| setting | accuracy [95% CI] | Δ vs first row [95% CI] | McNemar p | NFE | NFE ratio | drafter NFE | "
          "drafter s | model s | wall ratio (drafter included) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(results):
        print(row(labels[i] if i < len(labels) else f"`{r['spec']}`", r, i == 0))


if __name__ == "__main__":
    main()
