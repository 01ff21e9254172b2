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
:mod:`fewstep.evaluation.gold`); its outputs are scored like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig, resolve_config
from fewstep.errors import ConfigError
from fewstep.evaluation import store
from fewstep.evaluation.request import EvalRequest, check_examples, check_request
from fewstep.evaluation.summary import sample_rows, summary_header
from fewstep.models.checksum import model_checksum

__all__ = ["EvalRequest", "evaluate_shard", "run_eval"]  # EvalRequest: where the command line and scripts find it


@dataclass
class _Run:
    """Everything a process needs to decode its share: loaded once per process."""

    task: Any
    examples: list[Any]  # the problems of this run (after --limit)
    order: dict[str, int]  # problem id -> position among this run's problems, for merged files
    model: Any
    cfg: DecodeConfig
    out: Path
    identity: dict[str, Any]  # what identifies the run (compared on resume)
    drafter_load_s: float | None = None  # one-time seconds of loading the drafter (None: no drafter)


def answers(model, batch: Sequence[Any], cfg: DecodeConfig) -> list[Any]:
    """The model's results for a batch of examples: ``gold`` answers the examples themselves,
    every other model decodes their prompts."""
    from fewstep.engine import generate
    from fewstep.evaluation.gold import GoldModel

    if isinstance(model, GoldModel):
        return model.answer(batch)
    return generate(model, [e.prompt for e in batch], cfg)


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
    model = load_model(req.model, device=req.device, dtype=req.dtype, trust_remote_code=req.trust_remote_code,
                       quantize=req.quantize)
    cfg = resolve_config(model, req.strategy, req.settings, task.default_gen_length)
    strategy = "none" if model.kind == "gold" else cfg.strategy
    identity = {"task": req.task, "model": req.model, "quantize": req.quantize, "strategy": strategy,
                "config": cfg.to_dict(), "data": req.data, "batch_size": req.batch_size,
                "data_sha256": store.sha256_rows([e.id, e.prompt, e.reference] for e in every),
                "model_sha256": model_checksum(req.model)}
    order = {e.id: i for i, e in enumerate(examples)}
    return _Run(task, examples, order, model, cfg, Path(req.out), identity, preload_drafter(model, cfg))


def preload_drafter(model, cfg: DecodeConfig) -> float | None:
    """Load ``cfg.drafter`` now, where the decode would load it, so that no batch's time holds the
    load; its one-time seconds (None: no drafter, or a model that does not decode)."""
    from fewstep.drafting.drafter import drafter_dtype, load_seconds
    from fewstep.models.quantize import quantization_of

    if not cfg.drafter or model.kind not in ("diffusion", "uniform"):  # gold and causal models never draft
        return None
    return load_seconds(cfg.drafter, device=model.device, dtype=drafter_dtype(cfg), quantize=quantization_of(model))


def evaluate_shard(req: EvalRequest, rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                   progress: bool = True) -> dict[str, Any] | None:
    """Decode this process's problems (``examples[rank::world]``) not yet in any samples file.

    The directory is made ready by :func:`fewstep.evaluation.store.open_shard` (``--overwrite``,
    identity); rows are appended batch by batch (rank 0 refreshes summary.json each time).
    ``barrier`` (several ranks) is called again once this rank is done; then rank 0 merges every
    file into samples.jsonl, writes summary.json and returns it. Other ranks return None.
    """
    from tqdm import tqdm

    from fewstep.evaluation.timing import ForwardTimer

    run = prepare(req)
    path, done = store.open_shard(run.out, run.identity, rank, world, req.overwrite, barrier)
    mine = run.examples[rank::world]
    todo = [e for e in mine if e.id not in done]
    header = summary_header(run.identity, world, run.drafter_load_s)
    desc = f"{req.task} {run.identity['strategy']}" + (f" (rank 0 of {world})" if world > 1 else "")
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress or rank != 0,
               desc=desc, unit="problem")
    timer = ForwardTimer()
    shard = store.ShardWriter(run.out, path, run.order, header, main=rank == 0)
    with shard, timer.attach(run.model.module):
        for i in range(0, len(todo), req.batch_size):
            batch = todo[i: i + req.batch_size]
            t0, m0 = time.perf_counter(), timer.seconds  # wall: end to end, the drafter's time included
            results = answers(run.model, batch, run.cfg)
            wall, model_s = time.perf_counter() - t0, timer.seconds - m0
            rows = sample_rows(run.task, batch, results, wall, model_s, rank)
            summary = shard.add(rows)
            if summary is not None:
                bar.set_postfix(acc=f"{summary['accuracy']:.3f}", nfe=f"{summary['nfe_mean']:.1f}")
            bar.update(len(batch))
    bar.close()
    if barrier is not None:
        barrier()
    return store.finish(run.out, run.order, header) if rank == 0 else None


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
        store.prepare_out(out)
        with store.lock_dir(out) if launch.rank == 0 else nullcontext():
            return distributed.run_launched(req, launch, evaluate_shard, progress)
    with store.lock_dir(out):
        if req.num_processes > 1:
            return distributed.spawn(req, evaluate_shard, progress)
        summary = evaluate_shard(req, progress=progress)
    assert summary is not None
    return summary
