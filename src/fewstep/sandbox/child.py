"""The program the sandbox's interpreter runs first: install the audit hook, then execute ``main.py``.

It runs inside the jail, in a fresh interpreter started with ``-s -S`` (standard library only) and
the run's working directory as its current directory; :mod:`fewstep.sandbox.jail` passes this file's
text with ``-c``, so it imports nothing of fewstep. The audit hook is defence in depth: it refuses
process creation, signals, sockets other than local pairs, ctypes, raised resource limits, and
writes, renames and deletes outside the working directory. A program inside the same interpreter can
reach the hook's state, so the guarantees come from the kernel-level jail around the interpreter.
"""

from __future__ import annotations

import builtins
import os
import posix
import sys
from collections.abc import Callable
from typing import Any

PROGRAM = "main.py"
_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DENIED_EVENTS = frozenset({
    "os.exec", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn", "os.spawn",
    "os.system", "os.startfile", "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit",
    "webbrowser.open",
})
_DENIED_PREFIXES = ("socket.", "ctypes.")
_AF_UNIX = 1
_DENIED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes"})
# event -> (indices of path arguments, index of the dir_fd argument or None)
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], int | None]] = {
    "os.remove": ((0,), 1), "os.rmdir": ((0,), 1), "os.rename": ((0, 1), 2), "os.link": ((0, 1), 2),
    "os.symlink": ((0, 1), 2), "os.mkdir": ((0,), 2), "os.chmod": ((0,), 2), "os.chown": ((0,), 3),
    "os.utime": ((0,), 3), "os.truncate": ((0,), None), "os.setxattr": ((0,), None),
    "os.removexattr": ((0,), None), "os.chflags": ((0,), None), "os.lchflags": ((0,), None),
    "shutil.rmtree": ((0,), 1),
}
_DISABLED = ("kill", "killpg", "system", "fork", "forkpty", "chdir", "fchdir", "chroot", "mknod", "mkfifo",
             "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid")


def _fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _resolve(path: Any, dir_fd: Any = None) -> str:
    if isinstance(path, int):
        return _fd_target(path)
    text = os.fsdecode(os.fspath(path))
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(text):
        text = os.path.join(_fd_target(dir_fd), text)
    return os.path.realpath(text)


def _inside(path: Any, dir_fd: Any = None) -> bool:
    try:
        target = _resolve(path, dir_fd)
    except Exception:
        return False
    return target == _ROOT or target.startswith(_ROOT + os.sep) or target.startswith("pipe:") or target == "/dev/null"


def _refuse(what: str) -> None:
    raise PermissionError(f"sandbox: {what} is not allowed")


def _guard(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.__new__" and args[1] == _AF_UNIX:
        return  # local socket pairs (asyncio's self-pipe); connect and bind stay refused
    if event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
        _refuse(event)
    if event == "import" and args[0] in _DENIED_IMPORTS:
        _refuse("importing " + args[0])
    if event == "open":
        mode, flags = args[1], args[2]
        writes = isinstance(flags, int) and flags & _WRITE_FLAGS or isinstance(mode, str) and set(mode) & set("wax+")
        if writes and not _inside(args[0]):
            _refuse(f"writing {args[0]!r} outside the working directory")
    elif event in _PATH_EVENTS:
        paths, dir_fd_index = _PATH_EVENTS[event]
        dir_fd = args[dir_fd_index] if dir_fd_index is not None and dir_fd_index < len(args) else None
        for i in paths:
            if i < len(args) and not _inside(args[i], dir_fd):
                _refuse(f"{event} on {args[i]!r} outside the working directory")


def _disabled(name: str) -> Callable[..., None]:
    def disabled(*args: Any, **kwargs: Any) -> None:
        _refuse(name)

    return disabled


def _open_without_dir_fd(real_open: Callable[..., int]) -> Callable[..., int]:
    def open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            _refuse("os.open with dir_fd")
        return real_open(path, flags, mode)

    return open


def install_guard() -> None:
    """Replace the process-creating and identity-changing functions and add the audit hook."""
    import _posixsubprocess

    setattr(_posixsubprocess, "fork_exec", _disabled("_posixsubprocess.fork_exec"))  # noqa: B010
    for module in (os, posix):
        for name in _DISABLED:
            if hasattr(module, name):
                setattr(module, name, _disabled("os." + name))
        setattr(module, "open", _open_without_dir_fd(posix.open))  # noqa: B010
    builtins.exit = builtins.quit = sys.exit  # type: ignore[assignment]
    sys.addaudithook(_guard)


def run_program() -> None:
    """Execute ``main.py`` of the working directory as ``__main__``."""
    path = os.path.join(_ROOT, PROGRAM)
    with open(path, encoding="utf-8") as file:
        code = compile(file.read(), path, "exec")
    sys.argv = [path]
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": builtins})


if __name__ == "__main__":
    os.chdir(_ROOT)
    install_guard()
    run_program()
