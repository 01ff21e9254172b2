"""Accuracy against training steps: evaluate every snapshot of a training run.

    python scripts/learning_curve.py --run runs/tiny-dlm --out results/learning-curve-tiny-dlm

Each snapshot is evaluated with ``fewstep eval`` machinery (results per snapshot under
OUT/step_N/, resumable); OUT/curve.json, OUT/curve.md and OUT/curve.png summarise them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewstep.evaluation.runner import EvalRequest, run_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="training run directory (with snapshots/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="arith")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--strategy", default=None)
    ap.add_argument("--set", dest="settings", action="append", default=[])
    args = ap.parse_args()

    run, out = Path(args.run), Path(args.out)
    snaps = sorted((run / "snapshots").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if (run / "final").is_dir():
        snaps.append(run / "final")
    train_log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    steps_total = json.loads((run / "train_config.json").read_text())["steps"]
    points = []
    for snap in snaps:
        step = steps_total if snap.name == "final" else int(snap.name.split("_")[1])
        if any(p["step"] == step for p in points):
            continue
        s = run_eval(EvalRequest(task=args.task, model=str(snap), out=str(out / f"step_{step}"),
                                 strategy=args.strategy, limit=args.limit, batch_size=args.batch_size,
                                 settings=tuple(args.settings)), progress=False)
        loss = next((r["smooth_loss"] for r in reversed(train_log) if r["step"] <= step), None)
        points.append({"step": step, "accuracy": s["accuracy"], "accuracy_ci95": s["accuracy_ci95"],
                       "n": s["n"], "train_loss": loss})
        print(f"step {step:>5}: accuracy {s['accuracy']:.1%} (n={s['n']}), train loss {loss}")
    (out / "curve.json").write_text(json.dumps(points, indent=2) + "\n")
    rows = ["| training step | train loss (smoothed) | accuracy | 95% CI |", "|---:|---:|---:|---|"]
    for p in points:
        lo, hi = p["accuracy_ci95"]
        loss = f"{p['train_loss']:.3f}" if p["train_loss"] is not None else "-"
        rows.append(f"| {p['step']} | {loss} | {p['accuracy']:.1%} | [{lo:.1%}, {hi:.1%}] |")
    (out / "curve.md").write_text("\n".join(rows) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar([p["step"] for p in points], [100 * p["accuracy"] for p in points],
                yerr=[[100 * (p["accuracy"] - p["accuracy_ci95"][0]) for p in points],
                      [100 * (p["accuracy_ci95"][1] - p["accuracy"]) for p in points]], marker="o", capsize=3)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{args.task} accuracy (%)")
    ax.set_title(f"{run.name}: accuracy vs training steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)


if __name__ == "__main__":
    main()
