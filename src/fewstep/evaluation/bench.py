"""``fewstep bench``: several strategies side by side, in one process, on the same problems.

The work is cut into (repeat, batch, strategy) units; within each batch the strategies run one
after another, in alternating order from one batch to the next, so slow drift of the machine
hits every strategy alike. A warm-up batch per strategy runs first and is not timed. Outputs
are scored on the first repeat; wall time is the median over repeats. Everything is written as
it is measured (``timing.jsonl``, ``<strategy>/samples.jsonl``), so an interrupted bench
resumes where it stopped. Results: ``bench.json`` (a summary per strategy and ratios against
the first one), ``bench.md`` and ``pareto.png``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig, parse_strategy_spec
from fewstep.errors import ConfigError


@dataclass(frozen=True)
class BenchRequest:
    task: str
    model: str
    strategies: tuple[str, ...]
    out: str
    limit: int | None = None
    batch_size: int = 32
    repeats: int = 3
    settings: tuple[str, ...] = ()
    data: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    overwrite: bool = False  # remove the directory's earlier results instead of resuming them


def split_strategies(text: str) -> tuple[str, ...]:
    specs = tuple(s.strip() for s in text.split(";") if s.strip())
    if not specs:
        raise ConfigError("--strategies needs at least one strategy, e.g. \"llada;threshold:threshold=0.9\"")
    return specs


def _label(i: int, spec: str) -> str:
    return f"{i:02d}-" + re.sub(r"[^A-Za-z0-9._=-]+", "_", spec)[:60]


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of b - a over the same problems, with a 95% normal interval of the paired difference."""
    n = len(a)
    d = [int(y) - int(x) for x, y in zip(a, b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.959963984540054 * math.sqrt(var / n) if n else 0.0
    return mean, mean - half, mean + half


BENCH_FILES = ("bench_plan.json", "timing.jsonl", "bench.json", "bench.md", "pareto.png", "[0-9][0-9]-*/samples.jsonl")


def check_bench_request(req: BenchRequest) -> None:
    """Reject sizes that cannot work before anything is loaded."""
    if req.repeats < 1 or req.batch_size < 1:
        raise ConfigError(f"--repeats and --batch-size must be >= 1, got {req.repeats} and {req.batch_size}")
    if req.limit is not None and req.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {req.limit}")


def run_bench(req: BenchRequest, progress: bool = True) -> dict[str, Any]:
    from fewstep.config import resolve_config
    from fewstep.evaluation.results import check_identity, lock_dir, model_checksum, remove_results, sha256_rows
    from fewstep.evaluation.runner import check_examples
    from fewstep.models.loading import load_model
    from fewstep.tasks.base import get_task

    check_bench_request(req)
    task = get_task(req.task)
    every = task.examples(req.data)
    if not every:
        raise ConfigError(f"task {req.task} has no problems" + (f" in {req.data}" if req.data else ""))
    check_examples(every, req.data or req.task)
    examples = every[: req.limit]
    model = load_model(req.model, device=req.device, dtype=req.dtype)
    base = resolve_config(model, None, req.settings, task.default_gen_length)
    cfgs: list[DecodeConfig] = [parse_strategy_spec(s, base) for s in req.strategies]
    labels = [_label(i, s) for i, s in enumerate(req.strategies)]
    out = Path(req.out)
    plan = {"task": req.task, "model": req.model, "strategies": list(req.strategies), "n": len(examples),
            "batch_size": req.batch_size, "repeats": req.repeats, "data": req.data,
            "configs": [c.to_dict() for c in cfgs],
            "data_sha256": sha256_rows([e.id, e.prompt, e.reference] for e in every),
            "model_sha256": model_checksum(req.model)}
    with lock_dir(out):
        if req.overwrite:
            remove_results(out, BENCH_FILES)
        check_identity(out, plan, identity="bench_plan.json",
                       result_files=[out / "timing.jsonl", *(out / lab / "samples.jsonl" for lab in labels)])
        samples, timings = _measure(req, task, model, examples, labels, cfgs, out, progress)
        return _report(req, plan, labels, cfgs, samples, timings, out)


def _measure(req: BenchRequest, task, model, examples: list[Any], labels: list[str], cfgs: list[DecodeConfig],
             out: Path, progress: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run every (repeat, batch, strategy) unit not yet in ``timing.jsonl``; every sample row and every
    timing is appended as soon as it is measured, each problem's row once per strategy."""
    from tqdm import tqdm

    from fewstep.decoding.generate import generate
    from fewstep.evaluation.results import append_rows, read_samples, sample_rows, write_jsonl
    from fewstep.evaluation.timing import ForwardTimer

    timing_path = out / "timing.jsonl"
    timings: list[dict[str, Any]] = []
    done: set[tuple[str, int, int]] = set()
    for t in read_samples(timing_path, key=None):  # each unit once, even if written twice
        unit = (t["label"], t["repeat"], t["batch"])
        if unit not in done:
            done.add(unit)
            timings.append(t)
    samples = {lab: read_samples(out / lab / "samples.jsonl") for lab in labels}
    for lab in labels:  # drop a line cut off by an interruption before appending
        if (out / lab / "samples.jsonl").exists():
            write_jsonl(out / lab / "samples.jsonl", samples[lab])
    if timing_path.exists():
        write_jsonl(timing_path, timings)
    batches = [examples[i: i + req.batch_size] for i in range(0, len(examples), req.batch_size)]
    timer = ForwardTimer()
    units = req.repeats * len(batches) * len(cfgs)
    bar = tqdm(total=units, initial=len(done), disable=not progress, desc="bench", unit="batch")
    with timer.attach(model.module), open(timing_path, "a", encoding="utf-8") as tf:
        if len(done) < units:
            for cfg in cfgs:  # warm-up, untimed
                generate(model, [e.prompt for e in batches[0][: min(4, len(batches[0]))]], cfg)
        for r in range(req.repeats):
            for bi, batch in enumerate(batches):
                order = list(zip(labels, cfgs))
                if (r * len(batches) + bi) % 2:
                    order.reverse()
                for lab, cfg in order:
                    if (lab, r, bi) in done:
                        continue
                    t0, m0 = time.perf_counter(), timer.seconds
                    results = generate(model, [e.prompt for e in batch], cfg)
                    wall, model_s = time.perf_counter() - t0, timer.seconds - m0
                    if r == 0:
                        have = {x["id"] for x in samples[lab]}
                        rows = [x for x in sample_rows(task, batch, results, wall, model_s) if x["id"] not in have]
                        (out / lab).mkdir(exist_ok=True)
                        with open(out / lab / "samples.jsonl", "a", encoding="utf-8") as sf:
                            append_rows(sf, rows)
                        samples[lab].extend(rows)
                    t = {"label": lab, "repeat": r, "batch": bi, "wall_s": wall, "model_s": model_s}
                    append_rows(tf, [t])
                    timings.append(t)
                    bar.update(1)
    bar.close()
    return samples, timings


def _report(req: BenchRequest, plan: dict[str, Any], labels: list[str], cfgs: list[DecodeConfig],
            samples: dict[str, list[dict[str, Any]]], timings: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Summaries per strategy, ratios against the first; writes bench.json, bench.md and pareto.png."""
    from fewstep.evaluation.results import environment, summarise, write_bytes, write_json

    rows = []
    for lab, spec, cfg in zip(labels, req.strategies, cfgs):
        per_repeat = [(sum(t["wall_s"] for t in timings if t["label"] == lab and t["repeat"] == r),
                       sum(t["model_s"] for t in timings if t["label"] == lab and t["repeat"] == r))
                      for r in range(req.repeats)]
        s = summarise(samples[lab], {"strategy": cfg.strategy, "spec": spec, "label": lab, "config": cfg.to_dict()})
        s["wall_s"] = statistics.median(w for w, _ in per_repeat)
        s["model_s"] = statistics.median(m for _, m in per_repeat)
        s["wall_s_repeats"] = [w for w, _ in per_repeat]
        s["overhead_s"] = s["wall_s"] - s["model_s"]
        s["overhead_fraction"] = s["overhead_s"] / s["wall_s"] if s["wall_s"] else 0.0
        rows.append(s)
    first = rows[0]
    by_id_first = {x["id"]: x["correct"] for x in samples[labels[0]]}
    for s, lab in zip(rows, labels):
        mine = {x["id"]: x["correct"] for x in samples[lab]}
        ids = sorted(set(mine) & set(by_id_first), key=lambda i: (len(i), i))
        diff, lo, hi = paired_difference([by_id_first[i] for i in ids], [mine[i] for i in ids])
        s["vs_first"] = {
            "nfe_ratio": first["nfe_mean"] / s["nfe_mean"] if s["nfe_mean"] else None,
            "wall_ratio": first["wall_s"] / s["wall_s"] if s["wall_s"] else None,
            "accuracy_diff": diff,
            "accuracy_diff_ci95": [lo, hi],
        }
    result = {**{k: v for k, v in plan.items() if k not in ("configs", "data_sha256", "model_sha256")},
              "results": rows, "environment": environment()}
    write_json(out / "bench.json", result)
    write_bytes(out / "bench.md", markdown_table(result).encode())
    plot_pareto(result, out / "pareto.png")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    head = (f"{result['task']} / {result['model']}: {result['n']} problems, batch {result['batch_size']}, "
            f"median of {result['repeats']} timed repeat(s)\n\n")
    lines = [
        "| strategy | accuracy [95% CI] | Δ acc vs first [95% CI] | NFE | tokens/forward | NFE ratio | wall s | "
        "wall ratio | engine overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["results"]:
        lo, hi = s["accuracy_ci95"]
        v = s["vs_first"]
        dlo, dhi = v["accuracy_diff_ci95"]
        lines.append(
            f"| `{s['spec']}` | {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | {v['accuracy_diff']:+.1%} "
            f"[{dlo:+.1%}, {dhi:+.1%}] | {s['nfe_mean']:.2f} | {s['tokens_per_forward']:.2f} | "
            f"{v['nfe_ratio']:.2f}x | {s['wall_s']:.2f} | {v['wall_ratio']:.2f}x | {s['overhead_fraction']:.1%} |"
        )
    return head + "\n".join(lines) + "\n"


def plot_pareto(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    families: dict[str, list[dict[str, Any]]] = {}
    for s in result["results"]:
        families.setdefault(s["strategy"], []).append(s)
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
    fig.suptitle(f"{result['task']} / {result['model']}: accuracy vs cost")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return True
