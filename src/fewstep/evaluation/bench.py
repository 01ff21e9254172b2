"""``fewstep bench``: several strategies side by side, in one process, on the same problems.

The work is cut into (repeat, batch, strategy) units; within each batch the strategies run one
after another, in alternating order from one batch to the next, so slow drift of the machine
hits every strategy alike. A warm-up batch per strategy runs first and is not timed. Outputs
are scored on the first repeat; wall time is the median over repeats. Everything is written as
it is measured (``timing.jsonl``, ``<strategy>/samples.jsonl``), so an interrupted bench
resumes where it stopped. Results: ``bench.json`` (a summary per strategy and ratios against
the first one), ``bench.md`` and ``pareto.png`` (:mod:`fewstep.evaluation.bench_report`).

A row may name its own model beside its settings (``threshold:threshold=0.9,model=tiny-dlm-cd``;
the others decode with ``--model``): teacher, student and warm starts are then measured in one
run, on the same problems and batches. Each model is loaded once, before anything is timed (its
seconds reported apart, ``model_load_s``); a row's settings are resolved against its own model
(its decode defaults, its recommended warm start); the bench's identity records every row's model
and its checksum, so a resumed run never mixes results of different models. ``bench.json`` also
holds each curve's AUP (d3LLM's accuracy under parallelism, :mod:`fewstep.evaluation.aup`).
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
from fewstep.evaluation.bench_report import markdown_table, plot_pareto

__all__ = ["BenchRequest", "bench_configs", "markdown_table", "plot_pareto", "row_model", "run_bench",
           "split_strategies"]

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


def row_model(spec: str, default: str) -> tuple[str, str]:
    """A row's model and its spec without the ``model`` key: ``"threshold:threshold=0.9,model=tiny-dlm-cd"``
    -> ``("tiny-dlm-cd", "threshold:threshold=0.9")``; a spec that names none decodes with ``default``."""
    name, sep, own = spec.strip().partition(":")
    model, rest = default, []
    for part in (p.strip() for p in own.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if key.strip() != "model":
            rest.append(part)
        elif not eq or not value.strip():
            raise ConfigError(f"{spec!r}: model= needs a model name or directory, e.g. model=tiny-dlm-cd")
        else:
            model = value.strip()
    return model, name.strip() + (":" + ",".join(rest) if rest else "")


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
    warm-start setting, takes the model's recommended ones). ``model``: one model for every spec,
    or a sequence of models, one per spec: each spec is resolved against its own model (its decode
    defaults and recommended warm start); a spec's ``model`` key (:func:`row_model`) is not a
    setting. ``settings`` (``--set``) apply to every strategy: the loop's settings to all, a
    strategy parameter to the strategies that have it (a key that no strategy of the bench has is
    an error)."""
    from fewstep.config import applicable, override, resolve_config, split_assignment

    models = list(model) if isinstance(model, (list, tuple)) else [model] * len(strategies)
    pairs = [split_assignment(s) for s in settings]
    loop = [f"{k}={v}" for k, v in pairs if k in DecodeConfig.__dataclass_fields__]
    cfgs = []
    for spec, m in zip(strategies, models):
        name, _, own = row_model(spec, "")[1].partition(":")
        cfgs.append(resolve_config(m, name.strip(), loop, default_gen_length,
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
    from fewstep.tasks.base import get_task

    check_bench_request(req)
    names = [row_model(s, req.model)[0] for s in req.strategies]
    task = get_task(req.task)
    every = task.examples(req.data)
    if not every:
        raise ConfigError(f"task {req.task} has no problems" + (f" in {req.data}" if req.data else ""))
    check_examples(every, req.data or req.task)
    examples = every[: req.limit]
    loaded, model_loads = load_models(req, names)
    models = [loaded[n] for n in names]
    cfgs = bench_configs(models, req.strategies, req.settings, task.default_gen_length)
    labels = [_label(i, s) for i, s in enumerate(req.strategies)]
    out = Path(req.out)
    plan = {"task": req.task, "model": req.model, "quantize": req.quantize, "strategies": list(req.strategies),
            "n": len(examples), "batch_size": req.batch_size, "repeats": req.repeats, "data": req.data,
            "configs": [c.to_dict() for c in cfgs],
            "data_sha256": sha256_rows([e.id, e.prompt, e.reference] for e in every),
            **_models_identity(req.model, names)}
    with lock_dir(out):
        if req.overwrite:
            remove_results(out, BENCH_FILES)
        check_identity(out, plan, identity="bench_plan.json",
                       result_files=[out / "timing.jsonl", *(out / lab / "samples.jsonl" for lab in labels)])
        loads = _load_drafters(models, cfgs)
        samples, timings = _measure(req, task, models, examples, labels, cfgs, out, progress)
        return _report(req, plan, labels, cfgs, samples, timings, out, loads, names, model_loads)


def _models_identity(default: str, names: Sequence[str]) -> dict[str, Any]:
    """What identifies the bench's models: the default's checksum, and where rows name other models,
    each row's model and every model's checksum (a bench of one model keeps its earlier identity)."""
    from fewstep.models.checksum import model_checksum

    ident: dict[str, Any] = {"model_sha256": model_checksum(default)}
    if any(n != default for n in names):
        ident["row_models"] = list(names)
        ident["models_sha256"] = {n: model_checksum(n) for n in dict.fromkeys(names)}
    return ident


def load_models(req: BenchRequest, names: Sequence[str]) -> tuple[dict[str, Any], dict[str, float]]:
    """Each distinct model of the bench loaded once, in row order: the models by name and each one's
    load seconds (never part of a timed unit)."""
    from fewstep.models.loading import load_model

    models, seconds = {}, {}
    for name in dict.fromkeys(names):
        t0 = time.perf_counter()
        models[name] = load_model(name, device=req.device, dtype=req.dtype, trust_remote_code=req.trust_remote_code,
                                  quantize=req.quantize)
        seconds[name] = time.perf_counter() - t0
    return models, seconds


def _load_drafters(models: Sequence[Any], cfgs: Sequence[DecodeConfig]) -> dict[str, float]:
    """Every drafter of the bench loaded before anything is timed: its one-time seconds by name."""
    from fewstep.evaluation.runner import preload_drafter

    loads = {_drafter_key(c): preload_drafter(m, c) for m, c in zip(models, cfgs) if c.drafter}
    return {key: s for key, s in loads.items() if s is not None}


def _drafter_key(cfg: DecodeConfig) -> str:
    """A drafter as loaded: its name and the dtype the configuration asks it in."""
    return f"{cfg.drafter}@{cfg.drafter_dtype}"


def _resume(out: Path, labels: list[str]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """What an earlier, interrupted run of this bench measured: each row's samples and each timed unit
    once; a line cut off by the interruption is dropped from the files before anything is appended."""
    from fewstep import files
    from fewstep.evaluation.store import read_samples

    timing_path = out / "timing.jsonl"
    timings: list[dict[str, Any]] = []
    done: set[tuple[str, int, int]] = set()
    for t in read_samples(timing_path, key=None):  # each unit once, even if written twice
        unit = (t["label"], t["repeat"], t["batch"])
        if unit not in done:
            done.add(unit)
            timings.append(t)
    samples = {lab: read_samples(out / lab / "samples.jsonl") for lab in labels}
    for lab in labels:
        if (out / lab / "samples.jsonl").exists():
            files.atomic_write_jsonl(out / lab / "samples.jsonl", samples[lab])
    if timing_path.exists():
        files.atomic_write_jsonl(timing_path, timings)
    return samples, timings


def _measure(req: BenchRequest, task, models: Sequence[Any], examples: list[Any], labels: list[str],
             cfgs: list[DecodeConfig], out: Path, progress: bool
             ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run every (repeat, batch, strategy) unit not yet in ``timing.jsonl``, each row with its own
    model; every sample row and every timing is appended as soon as it is measured, each problem's
    row once per strategy."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from fewstep import files
    from fewstep.engine import generate
    from fewstep.evaluation.summary import sample_rows
    from fewstep.evaluation.timing import ForwardTimer

    samples, timings = _resume(out, labels)
    done = {(t["label"], t["repeat"], t["batch"]) for t in timings}
    batches = [examples[i: i + req.batch_size] for i in range(0, len(examples), req.batch_size)]
    timer = ForwardTimer()  # one clock over every model's forwards: the rows run one at a time
    rows_done = sum(len(batches[t["batch"]]) for t in timings if t["batch"] < len(batches))
    bar = tqdm(total=req.repeats * len(examples) * len(cfgs), initial=rows_done, disable=not progress,
               desc="bench", unit="row", dynamic_ncols=True)  # rows done of all, rate and time left
    with ExitStack() as stack, open(out / "timing.jsonl", "a", encoding="utf-8") as tf:
        for module in {id(m.module): m.module for m in models}.values():
            stack.enter_context(timer.attach(module))
        if len(done) < req.repeats * len(batches) * len(cfgs):
            for model, cfg in zip(models, cfgs):  # warm-up, untimed
                generate(model, [e.prompt for e in batches[0][: min(4, len(batches[0]))]], cfg)
        for r in range(req.repeats):
            for bi, batch in enumerate(batches):
                order = list(zip(labels, models, cfgs))
                if (r * len(batches) + bi) % 2:
                    order.reverse()
                for lab, model, cfg in order:
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
            loads: dict[str, float] | None = None, names: Sequence[str] | None = None,
            model_loads: dict[str, float] | None = None) -> dict[str, Any]:
    """Summaries per strategy, ratios against the first, each curve's AUP; writes bench.json, bench.md
    and pareto.png. ``loads``: each drafter's one-time load seconds (``drafter_load_s``, never in a
    timed unit); ``names``: each row's model; ``model_loads``: each model's one-time load seconds."""
    from fewstep.evaluation.aup import bench_aup
    from fewstep.evaluation.summary import environment, summarise
    from fewstep.files import atomic_write_json, atomic_write_text

    names = list(names or [req.model] * len(labels))
    rows = []
    for lab, spec, cfg, name in zip(labels, req.strategies, cfgs, names):
        per_repeat = [(sum(t["wall_s"] for t in timings if t["label"] == lab and t["repeat"] == r),
                       sum(t["model_s"] for t in timings if t["label"] == lab and t["repeat"] == r),
                       sum(t.get("drafter_s", 0.0) for t in timings if t["label"] == lab and t["repeat"] == r))
                      for r in range(req.repeats)]
        s = summarise(samples[lab], {"strategy": cfg.strategy, "spec": spec, "label": lab, "model": name,
                                     "config": cfg.to_dict()})
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
    hidden = ("configs", "data_sha256", "model_sha256", "models_sha256", "row_models")
    result = {**{k: v for k, v in plan.items() if k not in hidden}, "models": list(dict.fromkeys(names)),
              "model_load_s": dict(model_loads or {}), "results": rows, "aup": bench_aup(rows),
              "environment": environment()}
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
