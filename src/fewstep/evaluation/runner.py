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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig, resolve_config
from fewstep.errors import ConfigError
from fewstep.evaluation.results import (
    SUMMARY,
    collect,
    environment,
    merge,
    read_samples,
    sample_rows,
    shard_path,
    summarise,
    write_json,
    write_jsonl,
)


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
        if {k: old.get(k) for k in header} != header:
            raise ConfigError(f"{out} holds results of a different run (task, model or configuration); "
                              "use another --out")
    order = {e.id: i for i, e in enumerate(every)}
    return _Run(task, examples, order, model, cfg, out, header)


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
        return distributed.run_launched(req, launch, evaluate_shard, progress)
    if req.num_processes > 1:
        return distributed.spawn(req, evaluate_shard, progress)
    summary = evaluate_shard(req, progress=progress)
    assert summary is not None
    return summary
