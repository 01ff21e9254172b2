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

import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError

BENCH_FILES = ("bench_plan.json", "timing.jsonl", "bench.json", "bench.md", "pareto.png", "[0-9][0-9]-*/samples.jsonl")


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
    trust_remote_code: bool = False  # run code shipped in the model directory
    quantize: str | None = None  # weight-only quantization of the model (and drafters): int8, nf4, int4


def split_strategies(text: str) -> tuple[str, ...]:
    specs = tuple(s.strip() for s in text.split(";") if s.strip())
    if not specs:
        raise ConfigError("--strategies needs at least one strategy, e.g. \"llada;threshold:threshold=0.9\"")
    return specs


def _label(i: int, spec: str) -> str:
    return f"{i:02d}-" + re.sub(r"[^A-Za-z0-9._=-]+", "_", spec)[:60]


def paired_comparison(first: list[bool], second: list[bool]) -> dict[str, Any]:
    """How ``second`` differs from ``first`` on the same problems: accuracy difference (second minus
    first) with Newcombe's paired 95% interval, the exact McNemar p-value, and the discordant counts."""
    from fewstep.evaluation.stats import PairedTable, mcnemar_exact, newcombe_paired

    table = PairedTable.from_outcomes(first, second)
    diff, lo, hi = newcombe_paired(table)
    return {"accuracy_diff": diff, "accuracy_diff_ci95": [lo, hi], "accuracy_diff_method": "newcombe-paired-10",
            "mcnemar_p": mcnemar_exact(table), "only_first_correct": table.b, "only_second_correct": table.c}


def bench_configs(model, strategies: Sequence[str], settings: Sequence[str],
                  default_gen_length: int | None) -> list[DecodeConfig]:
    """One configuration per strategy spec, resolved as ``eval`` resolves its settings (a spec's own
    settings count as explicit ones: a spec with a drafter injects its draft and, when it sets no
    warm-start setting, takes the model's recommended ones). ``settings`` (``--set``) apply to every
    strategy: the loop's settings to all, a strategy parameter to the strategies that have it (a key
    that no strategy of the bench has is an error)."""
    from fewstep.config import applicable, override, resolve_config, split_assignment

    pairs = [split_assignment(s) for s in settings]
    loop = [f"{k}={v}" for k, v in pairs if k in DecodeConfig.__dataclass_fields__]
    cfgs = []
    for spec in strategies:
        name, _, own = spec.strip().partition(":")
        cfgs.append(resolve_config(model, name.strip(), loop, default_gen_length,
                                   request=[s for s in own.split(",") if s.strip()]))
    rest = {k: v for k, v in pairs if k not in DecodeConfig.__dataclass_fields__}
    for key in rest:
        if not any(applicable(c, {key: None}) for c in cfgs):
            raise ConfigError(f"--set {key}: no strategy of this bench has a setting {key!r}")
    return [override(c, applicable(c, rest)) if applicable(c, rest) else c for c in cfgs]


def check_bench_request(req: BenchRequest) -> None:
    """Reject sizes that cannot work before anything is loaded."""
    if req.repeats < 1 or req.batch_size < 1:
        raise ConfigError(f"--repeats and --batch-size must be >= 1, got {req.repeats} and {req.batch_size}")
    if req.limit is not None and req.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {req.limit}")


def run_bench(req: BenchRequest, progress: bool = True) -> dict[str, Any]:
    from fewstep.evaluation.request import check_examples
    from fewstep.evaluation.store import check_identity, lock_dir, remove_results, sha256_rows
    from fewstep.models.checksum import model_checksum
    from fewstep.models.loading import load_model
    from fewstep.tasks.base import get_task

    check_bench_request(req)
    task = get_task(req.task)
    every = task.examples(req.data)
    if not every:
        raise ConfigError(f"task {req.task} has no problems" + (f" in {req.data}" if req.data else ""))
    check_examples(every, req.data or req.task)
    examples = every[: req.limit]
    model = load_model(req.model, device=req.device, dtype=req.dtype, trust_remote_code=req.trust_remote_code,
                       quantize=req.quantize)
    cfgs = bench_configs(model, req.strategies, req.settings, task.default_gen_length)
    labels = [_label(i, s) for i, s in enumerate(req.strategies)]
    out = Path(req.out)
    plan = {"task": req.task, "model": req.model, "quantize": req.quantize, "strategies": list(req.strategies),
            "n": len(examples), "batch_size": req.batch_size, "repeats": req.repeats, "data": req.data,
            "configs": [c.to_dict() for c in cfgs],
            "data_sha256": sha256_rows([e.id, e.prompt, e.reference] for e in every),
            "model_sha256": model_checksum(req.model)}
    with lock_dir(out):
        if req.overwrite:
            remove_results(out, BENCH_FILES)
        check_identity(out, plan, identity="bench_plan.json",
                       result_files=[out / "timing.jsonl", *(out / lab / "samples.jsonl" for lab in labels)])
        loads = _load_drafters(model, cfgs)
        samples, timings = _measure(req, task, model, examples, labels, cfgs, out, progress)
        return _report(req, plan, labels, cfgs, samples, timings, out, loads)


def _load_drafters(model, cfgs: Sequence[DecodeConfig]) -> dict[str, float]:
    """Every drafter of the bench loaded before anything is timed: its one-time seconds by name."""
    from fewstep.evaluation.runner import preload_drafter

    loads = {_drafter_key(c): preload_drafter(model, c) for c in cfgs if c.drafter}
    return {key: s for key, s in loads.items() if s is not None}


def _drafter_key(cfg: DecodeConfig) -> str:
    """A drafter as loaded: its name and the dtype the configuration asks it in."""
    return f"{cfg.drafter}@{cfg.drafter_dtype}"


def _measure(req: BenchRequest, task, model, examples: list[Any], labels: list[str], cfgs: list[DecodeConfig],
             out: Path, progress: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run every (repeat, batch, strategy) unit not yet in ``timing.jsonl``; every sample row and every
    timing is appended as soon as it is measured, each problem's row once per strategy."""
    from tqdm import tqdm

    from fewstep import files
    from fewstep.engine import generate
    from fewstep.evaluation.store import read_samples
    from fewstep.evaluation.summary import sample_rows
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
            files.atomic_write_jsonl(out / lab / "samples.jsonl", samples[lab])
    if timing_path.exists():
        files.atomic_write_jsonl(timing_path, timings)
    batches = [examples[i: i + req.batch_size] for i in range(0, len(examples), req.batch_size)]
    timer = ForwardTimer()
    units = req.repeats * len(batches) * len(cfgs)
    rows_done = sum(len(batches[t["batch"]]) for t in timings if t["batch"] < len(batches))
    bar = tqdm(total=req.repeats * len(examples) * len(cfgs), initial=rows_done, disable=not progress,
               desc="bench", unit="row", dynamic_ncols=True)  # rows done of all, rate and time left
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
                    bar.set_description(f"bench {req.strategies[labels.index(lab)]} (repeat {r + 1}/{req.repeats})")
                    t0, m0 = time.perf_counter(), timer.seconds
                    results = generate(model, [e.prompt for e in batch], cfg)
                    wall, model_s = time.perf_counter() - t0, timer.seconds - m0
                    if r == 0:
                        have = {x["id"] for x in samples[lab]}
                        rows = [x for x in sample_rows(task, batch, results, wall, model_s) if x["id"] not in have]
                        (out / lab).mkdir(exist_ok=True)
                        with open(out / lab / "samples.jsonl", "a", encoding="utf-8") as sf:
                            files.append_jsonl(sf, rows)
                        samples[lab].extend(rows)
                    t = {"label": lab, "repeat": r, "batch": bi, "wall_s": wall, "model_s": model_s,
                         "drafter_s": sum(x.drafter_s for x in results)}
                    files.append_jsonl(tf, [t])
                    timings.append(t)
                    bar.update(len(batch))
    bar.close()
    return samples, timings


def _report(req: BenchRequest, plan: dict[str, Any], labels: list[str], cfgs: list[DecodeConfig],
            samples: dict[str, list[dict[str, Any]]], timings: list[dict[str, Any]], out: Path,
            loads: dict[str, float] | None = None) -> dict[str, Any]:
    """Summaries per strategy, ratios against the first; writes bench.json, bench.md and pareto.png.
    ``loads``: each drafter's one-time load seconds (``drafter_load_s``, never in a timed unit)."""
    from fewstep.evaluation.summary import environment, summarise
    from fewstep.files import atomic_write_json, atomic_write_text

    rows = []
    for lab, spec, cfg in zip(labels, req.strategies, cfgs):
        per_repeat = [(sum(t["wall_s"] for t in timings if t["label"] == lab and t["repeat"] == r),
                       sum(t["model_s"] for t in timings if t["label"] == lab and t["repeat"] == r),
                       sum(t.get("drafter_s", 0.0) for t in timings if t["label"] == lab and t["repeat"] == r))
                      for r in range(req.repeats)]
        s = summarise(samples[lab], {"strategy": cfg.strategy, "spec": spec, "label": lab, "config": cfg.to_dict()})
        s["wall_s"] = statistics.median(w for w, _, _ in per_repeat)  # end to end: the drafter's time included
        s["model_s"] = statistics.median(m for _, m, _ in per_repeat)
        s["drafter_s"] = statistics.median(d for _, _, d in per_repeat)  # per problem: its load is not in it
        if cfg.drafter and _drafter_key(cfg) in (loads or {}):
            s["drafter_load_s"] = (loads or {})[_drafter_key(cfg)]
        s["wall_s_repeats"] = [w for w, _, _ in per_repeat]
        s["overhead_s"] = s["wall_s"] - s["model_s"] - s["drafter_s"]  # the engine's own time
        s["overhead_fraction"] = s["overhead_s"] / s["wall_s"] if s["wall_s"] else 0.0
        rows.append(s)
    first = rows[0]
    by_id_first = {x["id"]: x["correct"] for x in samples[labels[0]]}
    for s, lab in zip(rows, labels):
        mine = {x["id"]: x["correct"] for x in samples[lab]}
        ids = sorted(set(mine) & set(by_id_first), key=lambda i: (len(i), i))
        s["vs_first"] = {
            "nfe_ratio": first["nfe_mean"] / s["nfe_mean"] if s["nfe_mean"] else None,
            "wall_ratio": first["wall_s"] / s["wall_s"] if s["wall_s"] else None,
            **paired_comparison([by_id_first[i] for i in ids], [mine[i] for i in ids]),
        }
    for s, lab, cfg in zip(rows, labels, cfgs):
        twin = uncached_twin(cfg, cfgs)
        if twin is not None:
            s["vs_uncached"] = compare_outputs(samples[labels[twin]], samples[lab], rows[twin], s)
    result = {**{k: v for k, v in plan.items() if k not in ("configs", "data_sha256", "model_sha256")},
              "results": rows, "environment": environment()}
    atomic_write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", markdown_table(result))
    plot_pareto(result, out / "pareto.png")
    return result


def uncached_twin(cfg: DecodeConfig, cfgs: Sequence[DecodeConfig]) -> int | None:
    """The index of the configuration that is ``cfg`` without a key/value cache (None: ``cfg`` has
    no cache, or the bench has no such twin)."""
    if cfg.cache == "none":
        return None
    plain = {**cfg.to_dict(), "cache": "none", "cache_refresh": 0}
    return next((i for i, c in enumerate(cfgs) if c.cache == "none" and c.to_dict() == plain), None)


def compare_outputs(base: list[dict[str, Any]], mine: list[dict[str, Any]], base_summary: dict[str, Any],
                    summary: dict[str, Any]) -> dict[str, Any]:
    """How a cached run's outputs differ from its uncached twin's on the same problems: outputs that
    differ (count and share), accuracy difference with Newcombe's interval, wall-clock gain."""
    theirs = {x["id"]: x for x in base}
    ids = [x["id"] for x in mine if x["id"] in theirs]
    by_id = {x["id"]: x for x in mine}
    differ = sum(by_id[i]["output"] != theirs[i]["output"] for i in ids)
    return {"n": len(ids), "outputs_differ": differ, "outputs_differ_share": differ / len(ids) if ids else 0.0,
            "wall_gain": base_summary["wall_s"] / summary["wall_s"] if summary["wall_s"] else None,
            **paired_comparison([theirs[i]["correct"] for i in ids], [by_id[i]["correct"] for i in ids])}


def markdown_table(result: dict[str, Any]) -> str:
    from fewstep.evaluation.summary import model_label

    head = (f"{result['task']} / {model_label(result)}: {result['n']} problems, batch {result['batch_size']}, "
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
            f"| `{s['spec']}` | {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | {v['accuracy_diff']:+.1%} "
            f"[{dlo:+.1%}, {dhi:+.1%}] | {v.get('only_first_correct', '-')} / {v.get('only_second_correct', '-')} | "
            f"{_p_value(v.get('mcnemar_p'))} | {s['nfe_mean']:.2f} | "
            f"{s['tokens_per_forward']:.2f} | "
            f"{v['nfe_ratio']:.2f}x | {s['wall_s']:.2f} | {v['wall_ratio']:.2f}x | {s['overhead_fraction']:.1%} |"
            + (_drafter_cells(s) if drafted else "")
            + (_vs_uncached(s.get("vs_uncached")) if cached else "")
        )
    return head + "\n".join(lines) + "\n"


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
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return True
