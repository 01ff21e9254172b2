"""The program the sandbox's interpreter runs first: install the audit hook, execute ``main.py``,
then the tests, then deliver the verdict.

It runs inside the jail, in a fresh interpreter started with ``-s -S`` (standard library only) and
the run's working directory as its current directory; :mod:`fewstep.sandbox.jail` passes this file's
text with ``-c``, so it imports nothing of fewstep. Arguments: ``PAYLOAD_FD VERDICT_FD`` when there
are tests. The payload (JSON: the test code and the run's nonce) is read and its descriptor closed
before the program runs; the nonce then lives only in a local variable of :func:`main`, and is
written to the verdict pipe after the last line of the tests.

The audit hook is defence in depth: it refuses process creation, signals, sockets other than local
pairs, ctypes, raised resource limits, writes, renames and deletes outside the working directory, and
some of the introspection a program would need to reach the nonce or skip the tests (the harness's
frames through ``sys._getframe``, tracing and profiling, the garbage collector's object lists,
``/proc/*/mem``). It is not a boundary: a program written against this harness can still reach the
harness's state from inside the interpreter (e.g. by walking ``f_back`` from its own frame) and
forge its own verdict. What it cannot do is touch anything outside its jail: other problems'
verdicts, the evaluator, the result files or the host (see docs/security.md).
"""

from __future__ import annotations

import builtins
import os
import posix
import sys

TYPE_CHECKING = False  # typing is not imported at run time: every import slows down each run
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROGRAM = "main.py"
_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DENIED_EVENTS = frozenset({
    "os.exec", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn", "os.spawn",
    "os.system", "os.startfile", "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit",
    "webbrowser.open", "sys._current_frames", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "cpython.PyInterpreterState_New",
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
_HARNESS = globals()
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
    if event == "sys._getframe" and args and args[0].f_globals is _HARNESS:
        _refuse("looking into the harness's frames")  # the standard library's own uses stay allowed
    if event == "socket.__new__" and args[1] == _AF_UNIX:
        return  # local socket pairs (asyncio's self-pipe); connect and bind stay refused
    if event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
        _refuse(event)
    if event == "import" and args[0] in _DENIED_IMPORTS:
        _refuse("importing " + args[0])
    if event == "open":
        if isinstance(args[0], (str, bytes)) and os.fsdecode(args[0]).startswith("/proc/") and \
                os.fsdecode(args[0]).endswith(("/mem", "/environ", "/fd")):
            _refuse(f"opening {args[0]!r}")
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


def _read_payload(fd: int) -> tuple[str, str]:
    """The test code and the nonce (``NONCE\\nTESTS``), read from (and then closing) the payload descriptor."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    nonce, _, tests = b"".join(chunks).decode("utf-8").partition("\n")
    return tests, nonce


def main(argv: list[str]) -> None:
    """Execute ``main.py`` of the working directory as ``__main__``, then the tests; then the verdict."""
    tests, nonce, verdict_fd = None, "", -1
    if len(argv) == 2:
        tests, nonce = _read_payload(int(argv[0]))
        verdict_fd = int(argv[1])
    os.chdir(_ROOT)
    path = os.path.join(_ROOT, PROGRAM)
    with open(path, encoding="utf-8") as file:
        code = compile(file.read(), path, "exec")
    checks = compile(tests, "<tests>", "exec") if tests is not None else None
    sys.argv = [path]
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    install_guard()
    exec(code, namespace)
    if checks is not None:
        exec(checks, namespace)
        sys.stdout.flush()
        os.write(verdict_fd, nonce.encode("ascii"))


if __name__ == "__main__":
    main(sys.argv[1:])
