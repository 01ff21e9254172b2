"""What ``fewstep eval`` is asked to do, and the checks of the request and of its problems before decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.errors import ConfigError, ResultsError, TaskError


@dataclass(frozen=True)
class EvalRequest:
    """What ``fewstep eval`` is asked to do (the runner executes it; distributed ranks receive it)."""

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
    overwrite: bool = False  # remove the directory's earlier results instead of resuming them
    trust_remote_code: bool = False  # run code shipped in the model directory
    quantize: str | None = None  # weight-only quantization of the model (and drafter): int8, nf4, int4


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


def check_examples(examples: list[Any], source: str) -> None:
    """Problems must have a text prompt and distinct ids (rows are keyed by id)."""
    seen: set[str] = set()
    for i, e in enumerate(examples):
        if not isinstance(e.prompt, str):
            raise TaskError(f"{source}: problem {i + 1} has a prompt that is not text ({type(e.prompt).__name__})")
        if e.id in seen:
            raise TaskError(f"{source}: problem id {e.id!r} appears twice")
        seen.add(e.id)
