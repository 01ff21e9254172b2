"""The program the sandbox's interpreter runs first: install the audit hook, execute ``main.py``, then
answer the tester's requests.

It runs inside the program's jail, in a fresh interpreter started with ``-s -S`` (standard library only)
and the run's working directory as its current directory; :mod:`fewstep.sandbox.jail` runs it from its
text after :mod:`fewstep.sandbox.wire` (``encode``, ``decode``, ``read_message``, ``write_message``),
so it imports nothing of fewstep. Arguments: ``REQUESTS_FD REPLIES_FD`` when there are tests. The tests
are not here: they run in another jail (:mod:`fewstep.sandbox.tester`), which calls the program's
functions through these two pipes and alone decides the verdict. Everything in this process, this file
included, is the program's to change: nothing here is trusted.

The audit hook is defence in depth for the jail: it refuses process creation, signals, sockets other
than local pairs, ctypes, raised resource limits, writes, renames and deletes outside the working
directory, tracing, the garbage collector's object lists and ``/proc/*/mem``. It is not a boundary
and no guarantee depends on it (see docs/security.md).
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

    from fewstep.sandbox.wire import decode, encode, read_message, write_message

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


class _Objects:
    """The program's objects the tester holds handles to (results that are not plain data)."""

    def __init__(self) -> None:
        self.table: list[Any] = []

    def handle(self, x: Any) -> dict[str, int]:
        self.table.append(x)
        return {"h": len(self.table) - 1}

    def get(self, n: int) -> Any:
        return self.table[n]


def _plain_object(namespace: dict[str, Any]) -> Callable[[str, dict], Any]:
    """Rebuild a plain object of the tests (e.g. a tree node) as an instance of the program's class of
    that name, or of a new class with that name."""

    def make(name: str, attrs: dict) -> Any:
        found = namespace.get(name)
        cls: Any = found if isinstance(found, type) else type(name, (), {})
        try:
            x = cls.__new__(cls)
        except TypeError:
            x = object.__new__(cls)
        x.__dict__.update(attrs)
        return x

    return make


_OPERATIONS: dict[str, Callable[..., Any]] = {
    "call": lambda o, *a, **k: o(*a, **k),
    "getattr": lambda o, name: getattr(o, name),
    "setattr": lambda o, name, value: setattr(o, name, value),
    "iter": iter, "next": next, "len": len, "repr": repr, "str": str,
    "getitem": lambda o, key: o[key],
    "contains": lambda o, item: item in o,
}


def _answer(request: Any, objects: _Objects, namespace: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request of the tester; the reply ({"r": value} or {"e"|"x": [type, message]})."""
    if request.get("op") == "globals":
        found: dict[str, Any] = {}
        for name in request["names"]:
            if name in namespace:
                x = namespace[name]
                module = type(x) is type(sys) and getattr(x, "__name__", None)
                if isinstance(module, str):
                    found[name] = {"m": module}
                else:
                    found[name] = objects.handle(x) if callable(x) else _encode_or_handle(x, objects)
        return {"r": found}
    try:
        make = _plain_object(namespace)
        target = objects.get(request["h"])
        args = decode(request["args"], objects.get, make)
        kwargs = decode(request["kwargs"], objects.get, make)
        result = _OPERATIONS[request["op"]](target, *args, **kwargs)
        return {"r": encode(result, objects.handle)}
    except Exception as e:
        return {"e": [type(e).__name__, str(e)[:2000]]}
    except BaseException as e:
        return {"x": [type(e).__name__, str(e)[:2000]]}


def _encode_or_handle(x: Any, objects: _Objects) -> Any:
    try:
        return encode(x, objects.handle)
    except (ValueError, RecursionError):
        return objects.handle(x)


def serve(namespace: dict[str, Any], requests: int, replies: int) -> None:
    """Answer the tester's requests until it closes the channel."""
    objects = _Objects()
    while True:
        try:
            request = read_message(requests)
        except EOFError:
            return
        write_message(replies, _answer(request, objects, namespace))


def main(argv: list[str]) -> None:
    """Execute ``main.py`` of the working directory as ``__main__``; with ``REQUESTS REPLIES`` descriptors,
    then answer the tester's requests on them, and leave. ``--no-guard`` (tests of the sandbox only):
    without the audit hook."""
    guard = "--no-guard" not in argv
    argv = [a for a in argv if a != "--no-guard"]
    os.chdir(_ROOT)
    path = os.path.join(_ROOT, PROGRAM)
    with open(path, encoding="utf-8") as file:
        code = compile(file.read(), path, "exec")
    sys.argv = [path]
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    if guard:
        install_guard()
    exec(code, namespace)
    if len(argv) == 2:
        serve(namespace, int(argv[0]), int(argv[1]))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
