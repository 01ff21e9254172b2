"""Starting a sandboxed interpreter: its resource limits and cgroups (applied between fork and exec), its
environment, and its command line, in a kernel jail or (``--unsafe-exec``) in a working directory."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fewstep.sandbox import kernel
from fewstep.sandbox.machine import PYTHON_FLAGS, isolation

PROGRAM_FILE = "main.py"
MAX_FILE_BYTES = 64 * 1024 * 1024  # largest file a program may write


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_s: int
    nproc: int | None  # RLIMIT_NPROC value, or None to leave it
    cgroup_procs: tuple[str, ...]  # cgroup.procs files to join


def apply_limits(limits: Limits) -> None:
    """Runs in the child between fork and exec: join the cgroups and set the resource limits.

    Only plain system calls here: nothing that imports or takes locks another thread may hold.
    """
    for procs in limits.cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))


def child_env(workdir: str) -> dict[str, str]:
    """The whole environment the child gets."""
    return {
        "HOME": workdir,
        "TMPDIR": workdir,
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }


@functools.lru_cache(maxsize=2)
def script(name: str) -> str:
    """A ``-c`` script running :mod:`fewstep.sandbox.wire` and then ``name`` (``child.py`` or ``tester.py``)
    as ``__main__``, from their text: the jailed interpreters import nothing of fewstep."""
    here = Path(__file__).parent
    wire = (here / "wire.py").read_text(encoding="utf-8")
    main = (here / name).read_text(encoding="utf-8")
    return f"exec(compile({wire!r}, 'wire.py', 'exec'))\nexec(compile({main!r}, {name!r}, 'exec'))\n"


def start(workdir: str | None, limits: Limits, entry: list[str], fds: tuple[int, ...],
          program: int | None) -> subprocess.Popen:
    """Start ``python entry`` in its own session, with the limits applied before exec and the descriptors
    ``fds`` kept open: in a fresh kernel jail when ``workdir`` is None (``program``, if given, copied to
    its ``main.py``), else in ``workdir`` (``--unsafe-exec``; ``program`` written there)."""
    if workdir is None:
        env = child_env(kernel.SANDBOX_DIR)
        disk = kernel.DISK_BYTES if program is not None else 1 << 20
        command = kernel.command([*PYTHON_FLAGS, *entry], program, disk, env)
        cwd = None
    else:
        if program is not None:
            with open(os.path.join(workdir, PROGRAM_FILE), "wb") as f:
                f.write(os.read(program, 1 << 30))
        env = child_env(workdir)
        command = [*isolation().command_prefix, sys.executable, *PYTHON_FLAGS, *entry]
        cwd = workdir
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        pass_fds=(*fds, *([program] if program is not None and workdir is None else [])),
        start_new_session=True,
        preexec_fn=functools.partial(apply_limits, limits),
    )
