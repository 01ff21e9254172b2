"""Per-run cgroups (root only): a cap on the number of tasks and on all the memory a run charges (heap,
tmpfs, memfd, page cache), and emptying and removing them after the run."""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import signal
import time
from pathlib import Path

_CGROUP_BASES = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")
_cgroup_names = itertools.count()


def cgroup_base(candidates: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The first (base directory, control file) where a per-run cgroup with that control file can be made
    (root only), else None."""
    if os.geteuid() != 0:
        return None
    for base, control in candidates:
        probe = os.path.join(base, f"fewstep-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except OSError:
            continue
        try:
            if os.path.exists(os.path.join(probe, control)):
                return base, control
        finally:
            remove_dir(probe)
    return None


def pids_cgroup_base() -> str | None:
    """A cgroup directory where per-run cgroups with a ``pids.max`` can be made (root only), else None."""
    found = cgroup_base(tuple((base, "pids.max") for base in _CGROUP_BASES))
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def memory_cgroup_base() -> tuple[str, str] | None:
    """(base directory, limit file) where per-run memory cgroups can be made (root only), else None."""
    return cgroup_base((("/sys/fs/cgroup/memory", "memory.limit_in_bytes"), ("/sys/fs/cgroup", "memory.max")))


@functools.cache
def remove_stale_cgroups(base: str) -> None:
    """Remove (once per process) the empty per-run cgroups that killed evaluators left under ``base``."""
    for entry in Path(base).glob("fewstep-sandbox-*"):
        pid = entry.name.split("-")[2]
        if pid.isdigit() and not Path("/proc", pid).exists():
            empty_cgroup(str(entry), patience_s=0.5)


def new_cgroup(base: str, settings: dict[str, str]) -> str | None:
    """A fresh cgroup under ``base`` with the given control files written; None if that fails."""
    remove_stale_cgroups(base)
    path = os.path.join(base, f"fewstep-sandbox-{os.getpid()}-{next(_cgroup_names)}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
        for name, value in settings.items():
            Path(path, name).write_text(value)
    except OSError:
        remove_dir(path)
        return None
    return path


def make_cgroups(pids_base: str | None, max_tasks: int, memory_bytes: int) -> list[str]:
    """Per-run cgroups capping the number of tasks (under ``pids_base``, when given) and the memory; those
    that could be made."""
    made = []
    if pids_base is not None:
        pids = new_cgroup(pids_base, {"pids.max": str(max_tasks)})
        if pids:
            made.append(pids)
    memory = memory_cgroup_base()
    if memory is not None:
        settings = {memory[1]: str(memory_bytes)}
        if memory[1] == "memory.max":
            settings["memory.swap.max"] = "0"
        group = new_cgroup(memory[0], settings)
        if group:
            made.append(group)
    return made


def memory_exhausted(cgroups: list[str]) -> bool:
    """Whether a run's memory cgroup hit its limit (the kernel then refuses or kills)."""
    for path in cgroups:
        for name in ("memory.failcnt", "memory.events"):
            try:
                text = Path(path, name).read_text()
            except OSError:
                continue
            if name == "memory.failcnt" and int(text.strip() or 0) > 0:
                return True
            events = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            if int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0:
                return True
    return False


def empty_cgroup(path: str, patience_s: float = 5.0) -> None:
    """SIGKILL every process in the cgroup until it is empty, then remove it."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    while time.monotonic() < deadline and not remove_dir(path):
        time.sleep(0.005)


def remove_dir(path: str) -> bool:
    """rmdir that reports success instead of raising."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
