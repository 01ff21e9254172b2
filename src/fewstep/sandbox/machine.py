"""Detecting (once per process) which kernel-level protections runs get on this machine: namespaces,
capability dropping and a process cap."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fewstep.sandbox.cgroups import pids_cgroup_base

PYTHON_FLAGS = ("-s", "-S", "-B", "-X", "utf8")  # what every sandboxed interpreter is started with


@dataclass(frozen=True)
class Isolation:
    """Which kernel-level protections runs get on this machine (detected once per process)."""

    command_prefix: tuple[str, ...]  # what the interpreter is started under (unshare, setpriv)
    network_namespace: bool
    pid_namespace: bool
    no_capabilities: bool
    process_limit: str  # "cgroup", "rlimit" or "none"
    cgroup_base: str | None = None  # where per-run pids cgroups are made, when process_limit is "cgroup"


def _starts_python(prefix: list[str]) -> bool:
    """Whether the interpreter starts and exits cleanly under the given command prefix."""
    try:
        done = subprocess.run(
            [*prefix, sys.executable, *PYTHON_FLAGS, "-c", "pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _candidate_prefixes() -> list[tuple[list[str], bool, bool, bool]]:
    """Command prefixes to try, strongest first: (prefix, network ns, pid ns, capabilities dropped)."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    as_root = os.geteuid() == 0
    drop = [setpriv, "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"] if setpriv else None
    candidates: list[tuple[list[str], bool, bool, bool]] = []
    if unshare:
        user = [] if as_root else ["--map-root-user"]
        full = [unshare, *user, "--net", "--pid", "--fork", "--kill-child", "--"]
        net = [unshare, *user, "--net", "--"]
        if drop:
            candidates.append((full + drop, True, True, True))
        candidates += [(full, True, True, False)]
        if drop:
            candidates.append((net + drop, True, False, True))
        candidates.append((net, True, False, False))
    if drop and as_root:
        candidates.append((drop, False, False, True))
    return candidates


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Detect (once) which namespaces, capability dropping and process cap work for this user."""
    prefix: tuple[str, ...] = ()
    flags = (False, False, False)
    for candidate, net, pid, caps in _candidate_prefixes():
        if _starts_python(candidate):
            prefix, flags = tuple(candidate), (net, pid, caps)
            break
    base = pids_cgroup_base()
    if base is not None:
        limit = "cgroup"
    elif os.geteuid() != 0:
        limit = "rlimit"
    else:
        limit = "none"
    return Isolation(prefix, *flags, limit, base)


def user_task_count(uid: int) -> int:
    """How many processes and threads the user currently has (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total
