"""Files that an interruption cannot leave half written, and the JSON-lines files fewstep reads.

Every file is replaced by a rename of a complete temporary file in the same directory
(:func:`atomic_write_bytes` and the text / JSON / JSON-lines forms built on it; :func:`atomic_save` for
writers that take a path, such as ``torch.save``); a directory is replaced by swapping in a complete
one (:func:`atomic_replace_dir`). Temporary names are ``.NAME.PID[.N].tmp``, so
that :func:`remove_stale_temps` can tell the leftovers of killed processes from those of live ones.
Appended JSON-lines files (:func:`append_jsonl`) can lose only their last line to a kill, which
:func:`read_jsonl` drops when asked to (``torn_tail``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fewstep.errors import ResultsError, TaskError


def temp_path(path: Path) -> Path:
    """The temporary file beside ``path`` that this process writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_save(path: Path, save: Callable[[Path], None], fsync: bool = False) -> None:
    """Replace ``path`` with what ``save(tmp)`` writes to a temporary file beside it (synced to disk first
    with ``fsync``); a kill at any moment leaves either the old file or the new one."""
    tmp = temp_path(path)
    try:
        save(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a complete temporary file in the same directory, synced, renamed."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any, allow_nan: bool = False) -> None:
    """Replace ``path`` with ``obj`` as indented JSON; by default strict JSON (a NaN or infinity is an
    error, never written)."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=allow_nan, default=str)
    except ValueError:
        raise ResultsError(f"refusing to write {path}: a value is NaN or infinite") from None
    atomic_write_text(path, text + "\n")


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """``rows`` as JSON lines (one object per line, each ending with a newline)."""
    return "".join(json.dumps(r, default=str) + "\n" for r in rows)


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows``, one JSON object per line, in one atomic rename."""
    atomic_write_text(path, jsonl_text(rows))


def append_jsonl(f: Any, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to an open JSON-lines file in one write, then flush (a kill can cut only the last line)."""
    f.write(jsonl_text(rows))
    f.flush()


def drop_torn_tail(path: Path) -> None:
    """Make an appended JSON-lines file end with a whole line before more is appended: a last line cut
    off by an interruption is dropped (one that is whole JSON but lacks its newline gets it)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    head, _, tail = data.rpartition(b"\n")
    try:
        json.loads(tail)
    except ValueError:
        atomic_write_bytes(path, head + b"\n" if head else b"")
    else:
        atomic_write_bytes(path, data + b"\n")


def _read_text(path: Path, error: type[Exception]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        where = path.read_bytes()[: e.start].count(b"\n") + 1
        raise error(f"{path}:{where}: not UTF-8 text") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None


def read_jsonl(path: str | Path, required: Iterable[str] = (), torn_tail: bool = False,
               error: type[Exception] = TaskError) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file: a JSON object on every line that is not blank, each with the
    ``required`` keys; anything else is an ``error`` naming the file and line.

    ``torn_tail``: the file is appended to by fewstep, and a last line that is not JSON (cut off by an
    interruption) is dropped instead of being an error."""
    p = Path(path)
    if not p.is_file():
        raise error(f"file not found: {p}" if not p.exists() else f"{p} is not a file")
    lines = _read_text(p, error).splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail and n == len(lines):
                break
            raise error(f"{p}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{p}:{n}: not a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise error(f"{p}:{n}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


# --- directories ---------------------------------------------------------------------------------------


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the complete directory ``tmp`` at ``dest`` (same filesystem), replacing what was there.

    With the Linux ``renameat2(RENAME_EXCHANGE)`` call the swap is atomic: at every moment ``dest``
    is either the old directory or the new one. Elsewhere the old one is moved aside first.
    """
    if dest.exists() and _exchange(tmp, dest):
        shutil.rmtree(tmp)  # now the old directory
        return
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old)
    else:
        os.rename(tmp, dest)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where that is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: Path, name: str = "*") -> None:
    """Remove the temporary files and directories (``.NAME.PID[.N].tmp``) that killed processes left."""
    for stale in directory.glob(f".{name}.*.tmp"):
        parts = stale.name[:-len(".tmp")].split(".")
        pids = [p for p in parts if p.isdigit()]
        if not pids or _alive(int(pids[0])):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def atomic_replace_dir(dest: Path, fill: Callable[[Path], None]) -> None:
    """Replace the directory ``dest`` with what ``fill(tmp)`` writes into a fresh directory beside it:
    until the swap ``dest`` keeps its previous content, whole (see :func:`replace_dir`)."""
    tmp = temp_dir_for(dest)
    try:
        fill(tmp)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_dir_for(dest: Path) -> Path:
    """A fresh empty directory beside ``dest`` (same filesystem), to be moved there by :func:`replace_dir`.

    Temporary directories that killed processes left beside ``dest`` are removed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent, dest.name)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.mkdir()
    return tmp
