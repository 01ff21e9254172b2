"""Accuracy against cost for every row of one or more `fewstep bench` results, with the Pareto frontier.

    python scripts/pareto_plot.py runs/results/warmstart-pays/arith-val/* --out pareto.png
    python scripts/pareto_plot.py DIR1 DIR2 --x forwards_with_drafter --out pareto-total.png

Each RESULTS_DIR holds a ``bench.json``. A bench is one (model, policy) marker set: the model named
in it, the policy its first row's spec (the no-warm-start row of scripts/warmstart_pays.sh). Every
row is a point with its accuracy's 95% interval; the line joins the rows no other row beats on both
accuracy and cost. The x axis (``--x``): ``nfe`` (diffusion forwards per problem, the default),
``forwards_with_drafter`` (diffusion plus drafter forwards) or ``wall_s`` (end-to-end seconds, the
drafter's time included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

X_AXES = {
    "nfe": ("diffusion forwards per problem (NFE)", lambda r: r["nfe_mean"]),
    "forwards_with_drafter": ("diffusion + drafter forwards per problem",
                              lambda r: r["nfe_mean"] + r.get("drafter_nfe_mean", 0.0)),
    "wall_s": ("wall time, s (drafter included)", lambda r: r["wall_s"]),
}


def read_bench(directory: str) -> dict:
    path = Path(directory) / "bench.json"
    if not path.is_file():
        raise SystemExit(f"{directory}: no bench.json (run `fewstep bench --out {directory}` first)")
    return json.loads(path.read_text())


def short_label(spec: str, base: str) -> str:
    """A row's spec without its bench's first spec (the policy): what the row adds to it."""
    if spec == base:
        return "no warm start"
    rest = spec[len(base):].lstrip(":,") if spec.startswith(base) else spec
    for long, short in (("init=", ""), ("_threshold", ""), ("verify_", "")):
        rest = rest.replace(long, short)
    return rest


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, accuracy) that no other point beats on both: cheapest first."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return best


def plot(benches: list[dict], x_axis: str, out: Path, log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    label, cost = X_AXES[x_axis]
    fig, (ax, key) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [3, 1.3]})
    markers, every = "osD^vP*X", []
    numbers: dict[str, int] = {}  # a row's short label -> its number in the key
    for i, b in enumerate(benches):
        rows = b["results"]
        base = rows[0]["spec"]
        xs, ys = [cost(r) for r in rows], [100 * r["accuracy"] for r in rows]
        err = [[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in rows],
               [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in rows]]
        ax.errorbar(xs, ys, yerr=err, fmt=markers[i % len(markers)], capsize=2, alpha=0.85,
                    label=f"{b['model']} / {base}")
        at: dict[tuple[float, float], list[str]] = {}  # rows on the same spot share one note
        for r, x, y in zip(rows, xs, ys):
            n = numbers.setdefault(short_label(r["spec"], base), len(numbers) + 1)
            at.setdefault((x, y), []).append(str(n))
        for (x, y), ns in at.items():
            ax.annotate(",".join(ns), (x, y), textcoords="offset points", xytext=(4, -9), fontsize=7)
        every += list(zip(xs, ys))
    line = frontier(every)
    ax.plot([x for x, _ in line], [y for _, y in line], "k--", lw=1, label="Pareto frontier")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    tasks = sorted({f"{b['task']} ({b['n']} problems)" for b in benches})
    ax.set_title(f"{', '.join(tasks)}: accuracy vs cost", fontsize=10)
    key.axis("off")
    key.text(0, 1, "\n".join(f"{n}: {text}" for text, n in numbers.items()), va="top", fontsize=7, wrap=True,
             family="monospace")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="directories holding a bench.json")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--x", choices=sorted(X_AXES), default="nfe", help="the cost axis (default: nfe)")
    ap.add_argument("--linear", action="store_true", help="linear cost axis (default: log)")
    args = ap.parse_args()
    benches = [read_bench(d) for d in args.results]
    plot(benches, args.x, Path(args.out), log_x=not args.linear)
    print(f"wrote {args.out}: {sum(len(b['results']) for b in benches)} rows from {len(benches)} benches")


if __name__ == "__main__":
    main()
