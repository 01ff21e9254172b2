"""Reading task data from JSONL files, with clear errors for missing files and bad rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fewstep.errors import TaskError
from fewstep.files import read_jsonl as _read_rows


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The rows of a task's data file (see :func:`fewstep.files.read_jsonl`); errors are TaskErrors."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"data file not found: {p}" if not p.exists() else f"data file {p} is not a file")
    return _read_rows(p, required, error=TaskError)
