"""Reading task data from JSONL files, with clear errors for missing files, bad rows and fields of
the wrong type."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fewstep.errors import TaskError
from fewstep.files import read_jsonl as _read_rows

TEXT = "text"  # a JSON string
NUMBER = "a number"  # a JSON number (not true / false)
TEXT_LIST = "a list of text"  # a JSON array of strings
NULL = "null"  # JSON null (for a field that may be left empty)
_JSON_NAMES = {str: "text", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object",
               type(None): "null"}


def _is(kind: str, value: Any) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == TEXT_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == NULL:
        return value is None
    raise ValueError(f"unknown field kind {kind!r}")


def check_fields(rows: Sequence[Mapping[str, Any]], kinds: Mapping[str, str | tuple[str, ...]], source: str) -> None:
    """Every row's fields of ``kinds`` (field -> a kind, or a tuple of accepted kinds: :data:`TEXT`,
    :data:`NUMBER`, :data:`TEXT_LIST`, :data:`NULL`) hold a value of that kind; a field a row lacks is not checked
    here (required fields are checked where the file is read). Else a TaskError that names the
    source, the row (1-based), the field and what it holds."""
    for i, row in enumerate(rows, 1):
        for key, kind in kinds.items():
            accepted = (kind,) if isinstance(kind, str) else kind
            if key in row and not any(_is(k, row[key]) for k in accepted):
                got = _JSON_NAMES.get(type(row[key]), type(row[key]).__name__)
                shown = repr(row[key]) if len(repr(row[key])) <= 40 else repr(row[key])[:37] + "..."
                raise TaskError(f"{source}: row {i}: field {key!r} is not {' or '.join(accepted)}: "
                                f"got {got} ({shown})")


def read_jsonl(path: str | Path, required: Iterable[str] = (),
               kinds: Mapping[str, str | tuple[str, ...]] | None = None) -> list[dict[str, Any]]:
    """The rows of a task's data file (see :func:`fewstep.files.read_jsonl`), each field of ``kinds``
    checked (:func:`check_fields`); errors are TaskErrors."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"data file not found: {p}" if not p.exists() else f"data file {p} is not a file")
    rows = _read_rows(p, required, error=TaskError)
    check_fields(rows, kinds or {}, str(p))
    return rows
