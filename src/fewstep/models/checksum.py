"""The SHA-256 that identifies a model directory, recorded by ``fewstep eval`` / ``bench`` (``model_sha256``
in run.json, summary.json, bench_plan.json) and by the lm-eval model (``get_model_info``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_WHOLE_FILE_BYTES = 64 * 1024 * 1024
_ENDS_BYTES = 1024 * 1024


def sha256_dir(path: Path) -> str:
    """A checksum of a model directory: every file's name and size, and its content (files over 64 MiB:
    their first and last MiB, so an 8B checkpoint is not read in full at every start). Hidden files
    are left out."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _WHOLE_FILE_BYTES:
                h.update(fh.read())
            else:
                h.update(fh.read(_ENDS_BYTES))
                fh.seek(size - _ENDS_BYTES)
                h.update(fh.read(_ENDS_BYTES))
    return h.hexdigest()


def model_checksum(name: str | os.PathLike) -> str | None:
    """The checksum of the model directory ``name`` (a bundled name or a path) resolves to; None for
    the built-in ``gold``."""
    if str(name) == "gold":
        return None
    from fewstep.models.loading import resolve

    return sha256_dir(resolve(str(name)))
