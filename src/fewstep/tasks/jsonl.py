"""Reading task data from JSONL files, with clear errors for missing files and bad rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fewstep.errors import TaskError


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"data file not found: {p}" if not p.exists() else f"data file {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        where = p.read_bytes()[: e.start].count(b"\n") + 1
        raise TaskError(f"{p}:{where}: not UTF-8 text") from None
    except OSError as e:
        raise TaskError(f"cannot read {p}: {e.strerror}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TaskError(f"{p}:{n}: not a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise TaskError(f"{p}:{n}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows
