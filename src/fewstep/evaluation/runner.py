"""``fewstep eval``: decode a task's problems, score them, and write results as they come.

``DIR/samples.jsonl`` gets one line per problem after each batch; ``DIR/summary.json`` is
rewritten after each batch from every sample written so far. Running the same command again
skips the problems already done; a different task, model, strategy or decode configuration in
the same directory is refused.

With several processes (``--num-processes N``, or under ``torchrun`` / ``accelerate launch``; see
:mod:`fewstep.evaluation.distributed`) rank r decodes ``problems[r::N]`` into its own
``DIR/samples.rank{r}.jsonl``; when every rank is done, rank 0 merges those files into
``samples.jsonl`` in problem order (removing them) and writes the one ``summary.json``. A run
interrupted part way resumes from whatever files it left, with any number of processes.

The model ``gold`` answers each problem with its reference solution (see
:mod:`fewstep.models.gold`); its outputs are scored like any other.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig, resolve_config
from fewstep.errors import ConfigError

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class EvalRequest:
    task: str
    model: str
    out: str
    strategy: str | None = None
    limit: int | None = None
    batch_size: int = 32
    settings: tuple[str, ...] = ()
    data: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    num_processes: int = 1


@dataclass
class _Run:
    """Everything a process needs to decode its share: loaded once per process."""

    task: Any
    examples: list[Any]  # the problems of this run (after --limit)
    order: dict[str, int]  # problem id -> position in the task's data, for merged files
    model: Any
    cfg: DecodeConfig
    out: Path
    header: dict[str, Any]  # what identifies the run (compared on resume)


def check_request(req: EvalRequest) -> None:
    """Reject sizes that cannot work before anything is loaded."""
    if req.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {req.batch_size}")
    if req.limit is not None and req.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {req.limit}")
    if req.num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {req.num_processes}")


def _per_rank(samples: list[dict[str, Any]], key: str) -> dict[int, float]:
    """Sum of ``key`` over the samples of each rank (rows without a rank count as rank 0)."""
    sums: dict[int, float] = {}
    for s in samples:
        rank = int(s.get("rank", 0))
        sums[rank] = sums.get(rank, 0.0) + s[key]
    return sums


def summarise(samples: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (with a Wilson interval), NFE and cost over ``samples``.

    ``wall_s`` / ``model_s``: ranks decode at the same time, so these are the largest per-rank sum
    of batch times (the plain sum for a one-process run); ``wall_s_per_rank`` lists every rank's
    when there is more than one.
    """
    from fewstep.evaluation.stats import wilson

    n = len(samples)
    correct = sum(bool(s["correct"]) for s in samples)
    nfe = sum(s["nfe"] for s in samples)
    lo, hi = wilson(correct, n)
    walls = _per_rank(samples, "wall_s")
    summary = {
        **header,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "nfe_mean": nfe / n if n else 0.0,
        "tokens_per_forward": sum(s["answer_tokens"] for s in samples) / nfe if nfe else 0.0,
        "drafter_nfe_mean": sum(s.get("drafter_nfe", 0) for s in samples) / n if n else 0.0,
        "drafter_s": max(_per_rank([s for s in samples if "drafter_s" in s], "drafter_s").values(), default=0.0),
        **{f"{k}_mean": sum(s.get(k, 0) for s in samples) / n if n else 0.0
           for k in ("injected", "confirmed", "revoked")},
        "wall_s": max(walls.values(), default=0.0),
        "model_s": max(_per_rank(samples, "model_s").values(), default=0.0),
    }
    if len(walls) > 1:
        summary["wall_s_per_rank"] = [walls[r] for r in sorted(walls)]
    return summary


def sample_rows(task, batch, results, wall: float, model_s: float, rank: int = 0) -> list[dict[str, Any]]:
    """One samples.jsonl row per problem: output, score, cost (batch time split evenly)."""
    rows = []
    for e, r in zip(batch, results):
        sc = task.score(e, r.text)
        rows.append({"id": e.id, "prompt": e.prompt, "output": r.text, "reference": e.reference,
                     "extracted": sc.extracted, "correct": sc.correct, "nfe": r.nfe,
                     "answer_tokens": r.answer_tokens, "drafter_nfe": r.drafter_nfe, "drafter_s": r.drafter_s,
                     "injected": r.injected, "confirmed": r.confirmed, "revoked": r.revoked,
                     "wall_s": wall / len(batch), "model_s": model_s / len(batch), "rank": rank})
    return rows


def environment() -> dict[str, Any]:
    import torch
    import transformers

    from fewstep import __version__

    return {
        "fewstep": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by an interruption: that problem is decoded again
    return rows


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows``, one JSON object per line, in one atomic rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    os.replace(tmp, path)


def shard_path(out: Path, rank: int, world: int) -> Path:
    """The file a rank appends to: samples.jsonl alone, samples.rank{r}.jsonl with several ranks."""
    return out / SAMPLES if world == 1 else out / f"samples.rank{rank}.jsonl"


def shard_files(out: Path) -> list[Path]:
    """The per-rank sample files in ``out``, by rank."""
    files = [p for p in out.glob("samples.rank*.jsonl") if p.stem.removeprefix("samples.rank").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("samples.rank")))


def collect(out: Path) -> list[dict[str, Any]]:
    """Every sample written in ``out`` so far (samples.jsonl, then the rank files), one per problem."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [out / SAMPLES, *shard_files(out)]:
        for row in read_samples(path):
            rows.setdefault(row["id"], row)
    return list(rows.values())


def merge(out: Path, order: dict[str, int]) -> list[dict[str, Any]]:
    """Fold the rank files into samples.jsonl, in problem order, and remove them."""
    rows = sorted(collect(out), key=lambda r: order.get(r["id"], len(order)))
    write_jsonl(out / SAMPLES, rows)
    for path in shard_files(out):
        path.unlink()
    return rows


def answers(model, batch: Sequence[Any], cfg: DecodeConfig) -> list[Any]:
    """The model's results for a batch of examples: ``gold`` answers the examples themselves,
    every other model decodes their prompts."""
    from fewstep.decoding.generate import generate
    from fewstep.models.gold import GoldModel

    if isinstance(model, GoldModel):
        return model.answer(batch)
    return generate(model, [e.prompt for e in batch], cfg)


def prepare(req: EvalRequest) -> _Run:
    """Load the task, its problems, the model and the configuration; refuse a directory that holds
    another run's results."""
    from fewstep.models.loading import load_model
    from fewstep.tasks.base import get_task

    task = get_task(req.task)
    every = task.examples(req.data)
    examples = every[: req.limit] if req.limit is not None else every
    model = load_model(req.model, device=req.device, dtype=req.dtype)
    cfg = resolve_config(model, req.strategy, req.settings, task.default_gen_length)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    strategy = "none" if model.kind == "gold" else cfg.strategy
    header = {"task": req.task, "model": req.model, "strategy": strategy, "config": cfg.to_dict(),
              "data": req.data, "batch_size": req.batch_size}
    summary_path = out / SUMMARY
    if summary_path.exists():
        old = json.loads(summary_path.read_text())
        if not same_run(old, header, cfg):
            raise ConfigError(f"{out} holds results of a different run (task, model or configuration); "
                              "use another --out")
    order = {e.id: i for i, e in enumerate(every)}
    return _Run(task, examples, order, model, cfg, out, header)


def same_run(old: dict[str, Any], header: dict[str, Any], cfg: DecodeConfig) -> bool:
    """Whether a recorded summary belongs to the run ``header`` describes: the same task, model,
    data and batch size, and a decode configuration that :func:`fewstep.config.same_settings`
    accepts (only the loop's settings and the active strategy's parameters count)."""
    from fewstep.config import same_settings

    others = [k for k in header if k != "config"]
    if {k: old.get(k) for k in others} != {k: header[k] for k in others}:
        return False
    return header["strategy"] == "none" or same_settings(old.get("config", {}), cfg)


def _decode(run: _Run, todo: list[Any], path: Path, rank: int, header: dict[str, Any], batch_size: int,
            bar) -> None:
    """Decode ``todo`` batch by batch, appending rows to ``path``; rank 0 also refreshes summary.json."""
    from fewstep.evaluation.timing import ForwardTimer

    timer = ForwardTimer()
    with open(path, "a") as f, timer.attach(run.model.module):
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            t0, m0 = time.perf_counter(), timer.seconds
            results = answers(run.model, batch, run.cfg)
            wall, model_s = time.perf_counter() - t0, timer.seconds - m0
            for row in sample_rows(run.task, batch, results, wall, model_s, rank):
                f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            if rank == 0:
                summary = summarise(collect(run.out), header)
                write_json(run.out / SUMMARY, summary)
                bar.set_postfix(acc=f"{summary['accuracy']:.3f}", nfe=f"{summary['nfe_mean']:.1f}")
            bar.update(len(batch))


def evaluate_shard(req: EvalRequest, rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                   progress: bool = True) -> dict[str, Any] | None:
    """Decode this process's problems (``examples[rank::world]``) not yet in any samples file.

    ``barrier`` (several ranks) is called once this rank is done; then rank 0 merges every file
    into samples.jsonl, writes summary.json and returns it. Other ranks return None.
    """
    from tqdm import tqdm

    run = prepare(req)
    path = shard_path(run.out, rank, world)
    write_jsonl(path, read_samples(path))  # a line cut off by an interruption does not survive
    done = {row["id"] for row in collect(run.out)}
    mine = run.examples[rank::world]
    todo = [e for e in mine if e.id not in done]
    header = {**run.header, "num_processes": world, "environment": environment()}
    desc = f"{req.task} {run.header['strategy']}" + (f" (rank 0 of {world})" if world > 1 else "")
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress or rank != 0,
               desc=desc, unit="problem")
    _decode(run, todo, path, rank, header, req.batch_size, bar)
    bar.close()
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    summary = summarise(merge(run.out, run.order), header)
    write_json(run.out / SUMMARY, summary)
    return summary


def run_eval(req: EvalRequest, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``req`` in this process, across ``req.num_processes`` spawned processes, or as one
    rank of a run started by torchrun / accelerate; returns the summary (on every rank)."""
    from fewstep.evaluation import distributed

    check_request(req)
    launch = distributed.launched()
    if launch is not None and launch.world > 1:
        return distributed.run_launched(req, launch, progress)
    if req.num_processes > 1:
        return distributed.spawn(req, progress)
    summary = evaluate_shard(req, progress=progress)
    assert summary is not None
    return summary


def one_line(s: dict[str, Any]) -> str:
    lo, hi = s["accuracy_ci95"]
    return (f"{s['task']} {s['model']} {s['strategy']}: accuracy {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"on {s['n']} | NFE {s['nfe_mean']:.2f} | tokens/forward {s['tokens_per_forward']:.2f} | "
            + (f"drafter NFE {s['drafter_nfe_mean']:.2f} ({s.get('drafter_s', 0.0):.1f}s) | "
               if s.get("config", {}).get("drafter") else "")
            + f"wall {s['wall_s']:.1f}s (model {s['model_s']:.1f}s)")
