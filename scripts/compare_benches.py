"""One table from several ``fewstep bench`` runs (one per model, same task and problems):
a row per strategy, a column per model, each cell ``accuracy @ NFE``.

For new measurements prefer one bench whose rows name their models (``--strategies
"llada;threshold:threshold=0.9,model=tiny-dlm-cd"``): same problems, same batches, timed side by
side, paired statistics against the first row. This script stays for runs already made apart.

    python scripts/compare_benches.py teacher=runs/results/frontier-teacher-200 \
        student=runs/results/frontier-student-200 ablation=runs/results/frontier-ablation-200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: str) -> dict:
    return json.loads((Path(path) / "bench.json").read_text())


def table(runs: dict[str, dict]) -> str:
    sizes = {name: r["n"] for name, r in runs.items()}
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"the runs cover different numbers of problems: {sizes}")
    specs: list[str] = []
    for r in runs.values():
        specs += [x["spec"] for x in r["results"] if x["spec"] not in specs]
    lines = ["| strategy | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for spec in specs:
        cells = []
        for r in runs.values():
            hit = next((x for x in r["results"] if x["spec"] == spec), None)
            cells.append(f"{100 * hit['accuracy']:.1f}% @ {hit['nfe_mean']:.2f}" if hit else "")
        lines.append(f"| `{spec}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=DIR")
    args = p.parse_args()
    runs = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        runs[name] = load(path)
    print(table(runs))


if __name__ == "__main__":
    main()
