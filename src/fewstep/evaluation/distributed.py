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
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fewstep.errors
from fewstep.errors import ConfigError, FewstepError
from fewstep.evaluation.store import SUMMARY

if TYPE_CHECKING:
    from fewstep.evaluation.request import EvalRequest


class Shard(Protocol):
    """Decodes one rank's share of a run (``evaluate_shard``); rank 0 returns the merged summary."""

    def __call__(self, req: EvalRequest, rank: int, world: int, barrier: Any, progress: bool
                 ) -> dict[str, Any] | None: ...

BACKEND = "gloo"
# The barrier waits for the slowest rank's whole share; a failed rank ends the run through the launcher.
TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local_rank: int


def launched() -> Launch | None:
    """This process's place in a run started by torchrun / accelerate, or None without a launcher."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got {env['RANK']!r}, "
                          f"{env['WORLD_SIZE']!r}, {env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is not in a world of size {world}")
    return Launch(rank, world, local)


def is_main_process() -> bool:
    """True unless this process is a rank other than 0 of a launched run (it prints the results)."""
    launch = launched()
    return launch is None or launch.rank == 0


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` means one GPU per rank on this machine: ``cuda:LOCAL_RANK``; other devices as given."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_rank(req: EvalRequest, shard: Shard, rank: int, world: int, local_rank: int, progress: bool
              ) -> dict[str, Any]:
    """Decode this rank's share in an initialised process group; every rank returns the summary."""
    import torch
    import torch.distributed as dist

    device = rank_device(req.device, local_rank)
    if str(device).split(":")[0] == "cpu":
        torch.set_num_threads(1)
    summary = shard(replace(req, device=device), rank, world, barrier=dist.barrier,
                    progress=progress and rank == 0)
    box = [summary]
    dist.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]


def run_launched(req: EvalRequest, launch: Launch, shard: Shard, progress: bool = True) -> dict[str, Any]:
    """Run as one rank of a launcher's world (the process group is created here unless it exists)."""
    import torch.distributed as dist

    if req.num_processes not in (1, launch.world):
        raise ConfigError(f"--num-processes {req.num_processes} does not match the launcher's "
                          f"{launch.world} processes; leave it out under torchrun / accelerate")
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(BACKEND, rank=launch.rank, world_size=launch.world, timeout=TIMEOUT)
    try:
        return _run_rank(req, shard, launch.rank, launch.world, launch.local_rank, progress)
    finally:
        if owner:
            dist.destroy_process_group()


def _worker(rank: int, req: EvalRequest, shard: Shard, port: int, progress: bool, errors: Any) -> None:
    """Entry point of a spawned worker: join the group on 127.0.0.1:port and decode rank's share."""
    import torch.distributed as dist

    world = req.num_processes
    dist.init_process_group(BACKEND, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    try:
        _run_rank(req, shard, rank, world, rank, progress)
    except FewstepError as e:
        errors.put((type(e).__name__, str(e)))
        raise
    finally:
        dist.destroy_process_group()


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
