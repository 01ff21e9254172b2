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

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep import files
from fewstep.config import DecodeConfig, resolve_config
from fewstep.errors import ConfigError, ResultsError
from fewstep.evaluation.results import (
    IDENTITY,
    SAMPLES,
    SUMMARY,
    EvalRequest,
    check_identity,
    collect,
    environment,
    lock_dir,
    merge,
    prepare_out,
    read_samples,
    remove_results,
    sample_rows,
    sha256_rows,
    shard_files,
    shard_path,
    summarise,
    try_lock,
)
from fewstep.files import atomic_write_json, atomic_write_jsonl
from fewstep.models.checksum import model_checksum

RESULT_FILES = (IDENTITY, SUMMARY, SAMPLES, "samples.rank*.jsonl")


@dataclass
class _Run:
    """Everything a process needs to decode its share: loaded once per process."""

    task: Any
    examples: list[Any]  # the problems of this run (after --limit)
    every: list[Any]  # all the task's problems (for the data checksum)
    order: dict[str, int]  # problem id -> position among this run's problems, for merged files
    model: Any
    cfg: DecodeConfig
    out: Path
    header: dict[str, Any]  # what identifies the run (compared on resume)

    def mine(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of this run's problems: exactly ``--limit`` of them once it is done."""
        ids = {e.id for e in self.examples}
        return [r for r in rows if r["id"] in ids]


def check_request(req: EvalRequest) -> None:
    """Reject sizes and paths that cannot work before anything is loaded."""
    if req.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {req.batch_size}")
    if req.limit is not None and req.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {req.limit}")
    if req.num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {req.num_processes}")
    out = Path(req.out)
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} exists and is not a directory")


def answers(model, batch: Sequence[Any], cfg: DecodeConfig) -> list[Any]:
    """The model's results for a batch of examples: ``gold`` answers the examples themselves,
    every other model decodes their prompts."""
    from fewstep.decoding.generate import generate
    from fewstep.models.gold import GoldModel

    if isinstance(model, GoldModel):
        return model.answer(batch)
    return generate(model, [e.prompt for e in batch], cfg)


def check_examples(examples: list[Any], source: str) -> None:
    """Problems must have a text prompt and distinct ids (rows are keyed by id)."""
    from fewstep.errors import TaskError

    seen: set[str] = set()
    for i, e in enumerate(examples):
        if not isinstance(e.prompt, str):
            raise TaskError(f"{source}: problem {i + 1} has a prompt that is not text ({type(e.prompt).__name__})")
        if e.id in seen:
            raise TaskError(f"{source}: problem id {e.id!r} appears twice")
        seen.add(e.id)


def prepare(req: EvalRequest) -> _Run:
    """Load the task, its problems, the model and the configuration (nothing is written yet)."""
    from fewstep.models.loading import load_model
    from fewstep.tasks.base import get_task

    task = get_task(req.task)
    every = task.examples(req.data)
    if not every:
        raise ConfigError(f"task {req.task} has no problems" + (f" in {req.data}" if req.data else ""))
    check_examples(every, req.data or req.task)
    examples = every[: req.limit] if req.limit is not None else every
    model = load_model(req.model, device=req.device, dtype=req.dtype, trust_remote_code=req.trust_remote_code)
    cfg = resolve_config(model, req.strategy, req.settings, task.default_gen_length)
    strategy = "none" if model.kind == "gold" else cfg.strategy
    header = {"task": req.task, "model": req.model, "strategy": strategy, "config": cfg.to_dict(),
              "data": req.data, "batch_size": req.batch_size,
              "data_sha256": sha256_rows([e.id, e.prompt, e.reference] for e in every),
              "model_sha256": model_checksum(req.model)}
    order = {e.id: i for i, e in enumerate(examples)}
    return _Run(task, examples, every, order, model, cfg, Path(req.out), header)


def _decode(run: _Run, todo: list[Any], path: Path, rank: int, header: dict[str, Any], batch_size: int,
            bar) -> None:
    """Decode ``todo`` batch by batch, appending rows to ``path``; rank 0 also refreshes summary.json.

    ``path`` is locked while it is written: a second process writing the same rank file fails."""
    from fewstep.evaluation.timing import ForwardTimer

    timer = ForwardTimer()
    with open(path, "a", encoding="utf-8") as f, timer.attach(run.model.module):
        if not try_lock(f.fileno()):
            raise ResultsError(f"{path} is being written by another process; wait for it or use another --out")
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            t0, m0 = time.perf_counter(), timer.seconds
            results = answers(run.model, batch, run.cfg)
            wall, model_s = time.perf_counter() - t0, timer.seconds - m0
            files.append_jsonl(f, sample_rows(run.task, batch, results, wall, model_s, rank))
            if rank == 0:
                summary = summarise(run.mine(collect(run.out)), header)
                atomic_write_json(run.out / SUMMARY, summary)
                bar.set_postfix(acc=f"{summary['accuracy']:.3f}", nfe=f"{summary['nfe_mean']:.1f}")
            bar.update(len(batch))


def evaluate_shard(req: EvalRequest, rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                   progress: bool = True) -> dict[str, Any] | None:
    """Decode this process's problems (``examples[rank::world]``) not yet in any samples file.

    With ``req.overwrite`` rank 0 first removes the directory's earlier results (the other ranks wait
    at ``barrier``). The run's identity is checked against the directory's and recorded before the
    first row. ``barrier`` (several ranks) is called again once this rank is done; then rank 0
    merges every file into samples.jsonl, writes summary.json and returns it. Other ranks return None.
    """
    from tqdm import tqdm

    run = prepare(req)
    if req.overwrite and rank == 0:
        remove_results(run.out, RESULT_FILES)
    if req.overwrite and barrier is not None:
        barrier()
    check_identity(run.out, run.header, result_files=[run.out / SAMPLES, *shard_files(run.out)])
    path = shard_path(run.out, rank, world)
    if path.exists():
        atomic_write_jsonl(path, read_samples(path))  # a line cut off by an interruption does not survive
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
    atomic_write_json(run.out / SUMMARY, summary)
    return summary


def run_eval(req: EvalRequest, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``req`` in this process, across ``req.num_processes`` spawned processes, or as one
    rank of a run started by torchrun / accelerate; returns the summary (on every rank).

    The process that starts the run (rank 0 under a launcher) holds the output directory's lock
    until the end; the other ranks lock their own rank file."""
    from fewstep.evaluation import distributed

    check_request(req)
    out = Path(req.out)
    launch = distributed.launched()
    if launch is not None and launch.world > 1:
        prepare_out(out)
        with lock_dir(out) if launch.rank == 0 else nullcontext():
            return distributed.run_launched(req, launch, evaluate_shard, progress)
    with lock_dir(out):
        if req.num_processes > 1:
            return distributed.spawn(req, evaluate_shard, progress)
        summary = evaluate_shard(req, progress=progress)
    assert summary is not None
    return summary
