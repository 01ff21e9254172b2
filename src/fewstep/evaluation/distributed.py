"""Multi-process ``fewstep eval``: shard the problems over ranks, merge into one summary.

Two ways in, one code path per rank (a ``shard`` function handed in by the caller, normally
:func:`fewstep.evaluation.runner.evaluate_shard`; this module does not import the runner):

- a launcher (``torchrun``, ``accelerate launch``) started this process: RANK / WORLD_SIZE /
  LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) are set, and each process is one rank;
- ``--num-processes N`` (N > 1) without a launcher: N workers are spawned here
  (``torch.multiprocessing``, start method ``spawn``), meeting on a free port of 127.0.0.1.

Ranks talk through ``torch.distributed`` with the gloo backend (it runs on CPU; models may still be
on GPUs: with ``--device cuda`` rank r uses ``cuda:LOCAL_RANK``). Rank r decodes ``problems[r::N]``
with the same configuration and batch size as a one-process run, so every problem's output, score
and NFE are those of a one-process run whenever decoding does not depend on the batch a problem is
in. After a barrier, rank 0 merges the rank files and writes ``summary.json`` (``num_processes``
recorded, ``wall_s`` the largest per-rank sum of batch times). On CPU each rank uses one thread.

A fewstep error in a spawned worker (bad setting, prompt too long, ...) stops every worker and is
raised again here with its own type and message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fewstep.errors
from fewstep.errors import ConfigError, FewstepError
from fewstep.evaluation.store import SUMMARY
from fewstep.parallel import Place, barrier, broadcast, free_port, launched, process_group, rank_device

__all__ = ["launched", "run_launched", "spawn"]

if TYPE_CHECKING:
    from fewstep.evaluation.request import EvalRequest


class Shard(Protocol):
    """Decodes one rank's share of a run (``evaluate_shard``); rank 0 returns the merged summary."""

    def __call__(self, req: EvalRequest, rank: int, world: int, barrier: Any, progress: bool
                 ) -> dict[str, Any] | None: ...

BACKEND = "gloo"
# The barrier waits for the slowest rank's whole share; a failed rank ends the run through the launcher.
TIMEOUT = timedelta(hours=24)


def _run_rank(req: EvalRequest, shard: Shard, place: Place, progress: bool) -> dict[str, Any]:
    """Decode this rank's share in an initialised process group; every rank returns the summary."""
    import torch

    device = rank_device(req.device, place.local_rank)
    if str(device).split(":")[0] == "cpu":
        torch.set_num_threads(1)
    summary = shard(replace(req, device=device), place.rank, place.world, barrier=partial(barrier, place),
                    progress=progress and place.main)
    summary = broadcast(place, summary)
    assert summary is not None
    return summary


def run_launched(req: EvalRequest, launch: Place, shard: Shard, progress: bool = True) -> dict[str, Any]:
    """Run as one rank of a launcher's world (the process group is created here unless it exists)."""
    if req.num_processes not in (1, launch.world):
        raise ConfigError(f"--num-processes {req.num_processes} does not match the launcher's "
                          f"{launch.world} processes; leave it out under torchrun / accelerate")
    with process_group(BACKEND, launch, timeout=TIMEOUT):
        return _run_rank(req, shard, launch, progress)


def _worker(rank: int, req: EvalRequest, shard: Shard, port: int, progress: bool, errors: Any) -> None:
    """Entry point of a spawned worker: join the group on 127.0.0.1:port and decode rank's share."""
    place = Place(rank, req.num_processes, rank)
    with process_group(BACKEND, place, init_method=f"tcp://127.0.0.1:{port}", timeout=TIMEOUT):
        try:
            _run_rank(req, shard, place, progress)
        except FewstepError as e:
            errors.put((type(e).__name__, str(e)))
            raise


def _worker_error(errors: Any) -> FewstepError | None:
    """The first fewstep error a worker reported, rebuilt with its own type; None if there is none."""
    if errors.empty():
        return None
    name, message = errors.get()
    kind = getattr(fewstep.errors, name, FewstepError)
    return kind(message) if isinstance(kind, type) and issubclass(kind, FewstepError) else FewstepError(message)


@contextmanager
def _quiet_spawn() -> Iterator[None]:
    """Hide torch's warning that it terminates the other workers after one failed (the error says why)."""
    logger = logging.getLogger("torch.multiprocessing.spawn")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def spawn(req: EvalRequest, shard: Shard, progress: bool = True) -> dict[str, Any]:
    """Run ``req`` over ``req.num_processes`` spawned workers; returns the merged summary.

    ``shard`` must be a module-level function (the workers receive it by pickling)."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    errors = mp.get_context("spawn").SimpleQueue()
    try:
        with _quiet_spawn():
            mp.spawn(_worker, args=(req, shard, free_port(), progress, errors), nprocs=req.num_processes, join=True)
    except ProcessException:
        error = _worker_error(errors)
        if error is not None:
            raise error from None
        raise  # not a fewstep error: keep the worker's traceback
    return json.loads((Path(req.out) / SUMMARY).read_text())
