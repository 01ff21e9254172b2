"""Process groups shared by the multi-process commands (``fewstep eval``'s ranks, ``fewstep distill``'s
data parallelism): where this process stands, the group's lifetime, and the collective calls they use.

A process is one rank of a launched run when a launcher (``torchrun``, ``accelerate launch``) set
RANK / WORLD_SIZE (and LOCAL_RANK, MASTER_ADDR / MASTER_PORT); otherwise it is the only one
(:data:`ALONE`). The collective helpers are no-ops in a world of one process, so callers need no
branch of their own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fewstep.errors import ConfigError


@dataclass(frozen=True)
class Place:
    """This process's rank among ``world`` processes, and its rank on this machine (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0


ALONE = Place()


def launched() -> Place | None:
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
    return Place(rank, world, local)


def is_main_process() -> bool:
    """True unless this process is a rank other than 0 of a launched run (it prints the results)."""
    place = launched()
    return place is None or place.main


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` means one GPU per rank on this machine: ``cuda:LOCAL_RANK``; other devices as given."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process_group(backend: str, place: Place | None = None, init_method: str | None = None,
                  timeout: timedelta | None = None) -> Iterator[None]:
    """The default ``torch.distributed`` process group for the block: created here (and destroyed at the
    end) unless one exists already. ``place`` gives rank and world size (else the launcher's
    environment does); ``init_method`` where the processes meet (else MASTER_ADDR / MASTER_PORT)."""
    import torch.distributed as dist

    owner = not dist.is_initialized()
    if owner:
        kwargs: dict[str, Any] = {} if place is None else {"rank": place.rank, "world_size": place.world}
        if init_method is not None:
            kwargs["init_method"] = init_method
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(backend, **kwargs)
    try:
        yield
    finally:
        if owner:
            dist.destroy_process_group()


def barrier(place: Place) -> None:
    """Wait for every process (nothing to wait for alone)."""
    if place.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_sum(place: Place, values: list[float], device: Any = "cpu") -> list[float]:
    """Each value summed over every process (float64, through a tensor on ``device``)."""
    if place.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(place: Place, obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), by rank."""
    if place.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * place.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(place: Place, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable), on every process."""
    if place.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
