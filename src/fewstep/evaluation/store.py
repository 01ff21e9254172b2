"""The result directory of ``fewstep eval`` and ``fewstep bench``: one writer, one run, rows by rank.

An eval directory holds ``run.json`` (the run's identity, written before the first row),
``samples.jsonl`` (one row per problem, keyed by its ``id``), ``summary.json`` (rewritten after
each batch) and, with several ranks, ``samples.rank{r}.jsonl`` until rank 0 merges them. Nothing
here decodes or scores; :mod:`fewstep.evaluation.runner` calls it in order: :func:`lock_dir`,
:func:`open_shard`, a :class:`ShardWriter` per rank (rows and summary after each batch), and
:func:`finish` (merge, final summary).

Guarantees (tested by killing runs at random moments): a directory has one writer at a time
(:func:`lock_dir`); every file is replaced by a rename of a complete temporary file in the same
directory (:mod:`fewstep.files`); only the last line of an appended file can be cut by an
interruption, and it is dropped on resume; a directory holding another run's results is refused
(:func:`check_identity`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fewstep import files
from fewstep.errors import ResultsError
from fewstep.evaluation.summary import summarise

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
IDENTITY = "run.json"
HOLDER = ".fewstep-lock"  # who holds the directory's lock (informational; the lock is on the directory)
RESULT_FILES = (IDENTITY, SUMMARY, SAMPLES, "samples.rank*.jsonl")  # what --overwrite removes
# Identity fields added after the first release: directories written before them resume without them.
LATER_FIELDS = ("data_sha256", "model_sha256")


def read_samples(path: Path, key: str | None = "id") -> list[dict[str, Any]]:
    """The rows of a JSONL result file, first copy of each ``key`` only (``key=None``: every row).

    A last line cut off by an interruption is dropped (that problem is decoded again); any other
    line that is not a JSON object with ``key`` is an error naming the line.
    """
    if not path.exists():
        return []
    try:
        rows = files.read_jsonl(path, required=() if key is None else (key,), torn_tail=True, error=ResultsError)
    except ResultsError as e:
        raise ResultsError(f"{e}; not a fewstep result file, or a corrupt one (use another --out)") from None
    if key is None:
        return rows
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(json.dumps(row[key]), row)
    return list(first.values())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by fewstep, or an error naming the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not UTF-8 text: not a fewstep result file") from None
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is corrupt ({e.msg} at line {e.lineno}); use another --out") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path} is corrupt (not a JSON object); use another --out")
    return obj


# ---------------------------------------------------------------------------------------------------
# One writer per directory.
# ---------------------------------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    """Create the output directory, or say in one line why it cannot be one."""
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"cannot create --out {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ResultsError(f"--out {out} is not writable")


def try_lock(fd: int) -> bool:
    """An exclusive, non-blocking flock on ``fd``; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def lock_dir(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``out`` (created if needed) for the block.

    The lock is an ``flock`` on the directory itself, so it leaves no file behind and dies with its
    holder (even on SIGKILL). A second writer fails at once with one line naming the holder, which
    the holder records in ``.fewstep-lock`` while it runs.
    """
    prepare_out(out)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    holder = out / HOLDER
    try:
        if not try_lock(fd):
            who = holder.read_text(errors="replace").strip() if holder.is_file() else "unknown process"
            raise ResultsError(f"{out} is in use by another fewstep run ({who}); wait for it or use another --out")
        command = " ".join(["fewstep", *sys.argv[1:]]) if sys.argv else "fewstep"
        files.atomic_write_text(holder, f"pid {os.getpid()} on {socket.gethostname()}: {command}")
        files.remove_stale_temps(out)
        try:
            yield
        finally:
            holder.unlink(missing_ok=True)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------
# The run's identity.
# ---------------------------------------------------------------------------------------------------


def same_config(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether a recorded decode configuration decodes like ``new`` (a current
    ``DecodeConfig.to_dict()``): only the loop's settings and the active strategy's parameters are
    compared, and a setting the record lacks counts as its default
    (:func:`fewstep.config.same_settings`), so adding a setting never invalidates a directory."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return old == new
    from fewstep.config import DecodeConfig, same_settings
    from fewstep.errors import ConfigError

    try:
        return same_settings(old, DecodeConfig.from_dict(new))
    except ConfigError:
        return old == new


def same_run(old_header: dict[str, Any], new_header: dict[str, Any]) -> bool:
    """Whether results written under ``old_header`` belong to the run ``new_header`` describes.

    Compared: every field of the new header; ``config`` / ``configs`` through :func:`same_config`;
    the checksums (``LATER_FIELDS``) only where the old header has them, so that directories
    written before they existed still resume.
    """
    for key, new in new_header.items():
        if key in LATER_FIELDS and key not in old_header:
            continue
        old = old_header.get(key)
        if key == "config":
            if not same_config(old, new):
                return False
        elif key == "configs":
            if not isinstance(old, list) or len(old) != len(new) or not all(map(same_config, old, new)):
                return False
        elif old != new:
            return False
    return True


def differences(old_header: dict[str, Any], new_header: dict[str, Any]) -> list[str]:
    """The fields that make :func:`same_run` false, for the error message."""
    return [k for k in new_header if not same_run({**new_header, k: old_header.get(k)}, new_header)
            and not (k in LATER_FIELDS and k not in old_header)]


def check_identity(out: Path, header: dict[str, Any], identity: str = IDENTITY,
                   result_files: Iterable[Path] = ()) -> None:
    """Refuse a directory that holds another run's results; else record ``header`` before any row.

    The previous identity is ``identity`` if present, else the header of ``summary.json`` (eval
    directories written before ``run.json`` existed). Result files without any identity are
    refused too: nothing says which run wrote them.
    """
    path = out / identity
    old = read_json(path) if path.exists() else read_json(out / SUMMARY) if (out / SUMMARY).exists() else None
    if old is None and any(p.exists() for p in result_files):
        raise ResultsError(f"{out} holds results without a record of the run that wrote them; "
                           "use another --out or --overwrite")
    if old is not None and not same_run(old, header):
        raise ResultsError(f"{out} holds results of a different run ({', '.join(differences(old, header))} "
                           "differ); use another --out or --overwrite")
    files.atomic_write_json(path, header)


def sha256_rows(rows: Iterable[Any]) -> str:
    """A checksum of JSON-serialisable rows (the task's problems), independent of where they came from."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def remove_results(out: Path, names: Iterable[str]) -> None:
    """``--overwrite``: remove the named result files and directories of ``out`` (nothing else)."""
    for name in names:
        for p in out.glob(name):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)


def shard_path(out: Path, rank: int, world: int) -> Path:
    """The file a rank appends to: samples.jsonl alone, samples.rank{r}.jsonl with several ranks."""
    return out / SAMPLES if world == 1 else out / f"samples.rank{rank}.jsonl"


def shard_files(out: Path) -> list[Path]:
    """The per-rank sample files in ``out``, by rank."""
    files = [p for p in out.glob("samples.rank*.jsonl") if p.stem.removeprefix("samples.rank").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("samples.rank")))


def collect(out: Path) -> list[dict[str, Any]]:
    """Every sample written in ``out`` so far (samples.jsonl, then the rank files), one per problem."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [out / SAMPLES, *shard_files(out)]:
        for row in read_samples(path):
            rows.setdefault(row["id"], row)
    return list(rows.values())


def merge(out: Path, order: dict[str, int]) -> list[dict[str, Any]]:
    """Fold the rank files into samples.jsonl, in problem order, and remove them.

    ``order`` maps this run's problem ids to their positions; rows of other problems (decoded by an
    earlier run with a larger ``--limit``) are dropped, so samples.jsonl holds exactly this run's rows."""
    rows = sorted((r for r in collect(out) if r["id"] in order), key=lambda r: order[r["id"]])
    files.atomic_write_jsonl(out / SAMPLES, rows)
    for path in shard_files(out):
        path.unlink()
    return rows




# ---------------------------------------------------------------------------------------------------
# One rank's share of an eval directory, in the order the runner uses it.
# ---------------------------------------------------------------------------------------------------


def open_shard(out: Path, identity: dict[str, Any], rank: int, world: int, overwrite: bool = False,
               barrier: Callable[[], None] | None = None) -> tuple[Path, set[str]]:
    """Make ``out`` ready for rank ``rank`` to append its rows; returns its file and the ids already done.

    With ``overwrite`` rank 0 first removes the directory's earlier results (the other ranks wait at
    ``barrier``). The run's identity is checked against the directory's and recorded before the first
    row."""
    if overwrite and rank == 0:
        remove_results(out, RESULT_FILES)
    if overwrite and barrier is not None:
        barrier()
    existing = [out / SAMPLES, *shard_files(out)]
    check_identity(out, identity, result_files=existing)
    return shard_path(out, rank, world), {row["id"] for row in collect(out)}


class ShardWriter:
    """A rank's samples file open for appending rows, batch by batch (a context manager).

    The file is locked while open (a second process writing the same rank file fails at once), and a
    last line cut off by an interruption is dropped first. The main rank (``main``) also rewrites
    summary.json after each batch from every row of this run's problems (``order``) written so far."""

    def __init__(self, out: Path, path: Path, order: dict[str, int], header: dict[str, Any], main: bool):
        self.out, self.path, self.order, self.header, self.main = out, path, order, header, main
        self._file: Any = None

    def __enter__(self) -> ShardWriter:
        files.drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if not try_lock(self._file.fileno()):
            self._file.close()
            raise ResultsError(f"{self.path} is being written by another process; wait for it or use another --out")
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def add(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Append one batch's rows; the main rank returns the refreshed summary, the others None."""
        files.append_jsonl(self._file, rows)
        if not self.main:
            return None
        summary = summarise([r for r in collect(self.out) if r["id"] in self.order], self.header)
        files.atomic_write_json(self.out / SUMMARY, summary)
        return summary


def finish(out: Path, order: dict[str, int], header: dict[str, Any]) -> dict[str, Any]:
    """Once every rank is done: merge the rows into samples.jsonl (see :func:`merge`), write
    summary.json and return it."""
    rows = merge(out, order)
    summary = summarise(rows, header)
    files.atomic_write_json(out / SUMMARY, summary)
    return summary
