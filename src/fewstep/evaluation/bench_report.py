"""What ``fewstep bench`` writes besides its raw measurements: ``bench.md`` (:func:`markdown_table`)
and ``pareto.png`` (:func:`plot_pareto`), both from the result that ``bench.json`` holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def models_of(result: dict[str, Any]) -> list[str]:
    """The models a bench measured, in row order (a result written before rows named their model: its one)."""
    return list(dict.fromkeys(s.get("model", result["model"]) for s in result["results"]))


def markdown_table(result: dict[str, Any]) -> str:
    """bench.md: the table of rows, each against the first, then the one-time load seconds of each
    model and each curve's AUP (:mod:`fewstep.evaluation.aup`) where the result holds them."""
    models = models_of(result)
    several = len(models) > 1
    quantized = f" ({result['quantize']})" if result.get("quantize") else ""
    head = (f"{result['task']} / {', '.join(models)}{quantized}: {result['n']} problems, batch {result['batch_size']}, "
            f"median of {result['repeats']} timed repeat(s); Δ: paired difference against the first strategy "
            f"with Newcombe's 95% interval; only first / only it: problems exactly one of the two solved; "
            f"McNemar: exact two-sided p-value; wall s is end to end (a drafter's time included), engine "
            f"overhead is wall time outside the diffusion model's forwards and the drafter; drafter s and "
            f"model s: the drafter's and the diffusion model's seconds on the same problems; drafter load s: "
            f"its one-time load, in no other column\n\n")
    lines = [
        "| strategy | accuracy [95% CI] | Δ acc vs first [95% CI] | only first / only it | McNemar p | NFE | "
        "tokens/forward | NFE ratio | wall s | wall ratio | engine overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if several:  # rows of different models: which one each row decoded with
        lines = [lines[0].replace("| strategy |", "| strategy | model |", 1), "|---" + lines[1]]
    drafted = any(s.get("drafter_nfe_mean") for s in result["results"])
    if drafted:  # the drafter's forwards and seconds (already inside wall s and wall ratio) against the model's
        lines = [lines[0] + " drafter NFE | drafter s | model s | drafter load s |", lines[1] + "---:|---:|---:|---:|"]
    cached = any("vs_uncached" in s for s in result["results"])
    if cached:  # each cached configuration against the same configuration without the cache
        lines = [lines[0] + " outputs ≠ uncached | Δ acc vs uncached | wall gain vs uncached |",
                 lines[1] + "---:|---:|---:|"]
    for s in result["results"]:
        lo, hi = s["accuracy_ci95"]
        v = s["vs_first"]
        dlo, dhi = v["accuracy_diff_ci95"]
        lines.append(
            f"| `{s['spec']}` |" + (f" {s.get('model', result['model'])} |" if several else "")
            + f" {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | {v['accuracy_diff']:+.1%} "
            f"[{dlo:+.1%}, {dhi:+.1%}] | {v.get('only_first_correct', '-')} / {v.get('only_second_correct', '-')} | "
            f"{_p_value(v.get('mcnemar_p'))} | {s['nfe_mean']:.2f} | "
            f"{s['tokens_per_forward']:.2f} | "
            f"{v['nfe_ratio']:.2f}x | {s['wall_s']:.2f} | {v['wall_ratio']:.2f}x | {s['overhead_fraction']:.1%} |"
            + (_drafter_cells(s) if drafted else "")
            + (_vs_uncached(s.get("vs_uncached")) if cached else "")
        )
    return head + "\n".join(lines) + "\n" + _footer(result)


def _footer(result: dict[str, Any]) -> str:
    """The lines under the table: each model's one-time load and each curve's AUP (where recorded)."""
    out = []
    loads = result.get("model_load_s")
    if loads:
        out.append("model load s (once per model, in no other column): "
                   + ", ".join(f"{name} {s:.2f}" for name, s in loads.items()))
    aups = result.get("aup")
    if aups:
        out.append("AUP (d3LLM's accuracy under parallelism: area under accuracy % against tokens per forward, "
                   "weighted by W(y) = min(exp(-3 (1 - y / y_max)), 1), y_max the best accuracy of this bench; "
                   "points 5 below a curve's first left out): "
                   + " | ".join(f"{name} {v:.1f}" for name, v in aups.items()))
    return "".join(f"\n{line}\n" for line in out)


def _drafter_cells(s: dict[str, Any]) -> str:
    load = s.get("drafter_load_s")
    return (f" {s.get('drafter_nfe_mean', 0.0):.1f} | {s.get('drafter_s', 0.0):.2f} | {s.get('model_s', 0.0):.2f} | "
            f"{'-' if load is None else f'{load:.2f}'} |")


def _vs_uncached(u: dict[str, Any] | None) -> str:
    if u is None:
        return " - | - | - |"
    lo, hi = u["accuracy_diff_ci95"]
    return (f" {u['outputs_differ']} ({u['outputs_differ_share']:.1%}) | {u['accuracy_diff']:+.1%} "
            f"[{lo:+.1%}, {hi:+.1%}] | {u['wall_gain']:.2f}x |")


def _p_value(p: float | None) -> str:
    """A p-value for the table: two significant digits, ``<0.001`` below that, ``-`` when absent."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def plot_pareto(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        return False
    from fewstep.files import atomic_save

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    from fewstep.evaluation.aup import curve_name

    several = len(models_of(result)) > 1
    families: dict[str, list[dict[str, Any]]] = {}
    for s in result["results"]:  # a line per strategy, per model and drafter where the bench has several models
        families.setdefault(f"{curve_name(s)}: {s['strategy']}" if several else s["strategy"], []).append(s)
    markers = "osD^vP*X"
    for ax, key, label in ((axes[0], "nfe_mean", "forward passes per problem (NFE, log scale)"),
                           (axes[1], "wall_s", "wall time (s, median, log scale)")):
        for i, (family, runs) in enumerate(families.items()):
            runs = sorted(runs, key=lambda r: r[key])
            xs, ys = [r[key] for r in runs], [100 * r["accuracy"] for r in runs]
            err = [[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in runs],
                   [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in runs]]
            ax.errorbar(xs, ys, yerr=err, fmt=markers[i % len(markers)] + "-", capsize=2, label=family, alpha=0.85)
            for r, x, y in zip(runs, xs, ys):
                note = r["spec"].partition(":")[2] or "default"
                ax.annotate(note, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{result['task']} / {', '.join(models_of(result))}: accuracy vs cost")
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return True
