"""The process that runs a problem's tests and alone decides its verdict.

It runs in a jail of its own (see :mod:`fewstep.sandbox.jail`), never in the program's process or
PID namespace, so nothing the program does can reach its memory, its frames or its descriptors. The
test code (trusted: it comes from the benchmark) sees the program's names as stand-ins: a function of
the program becomes a :class:`Remote` whose calls send their arguments to the program's process
(:mod:`fewstep.sandbox.child`) and get back a result as plain data (:mod:`fewstep.sandbox.wire`); a
module the program imported is imported here. Results that are not plain data stay in the program's
process and are reached through a handle that forwards calls, attributes (read and set), iteration,
``len``, indexing and ``in``, but never comparisons: such an object equals only itself here.

Arguments: ``PAYLOAD_FD VERDICT_FD REQUESTS_FD REPLIES_FD``. The payload is ``NONCE\\nNAMES\\nTESTS``
(NAMES: the built-ins the program's functions may replace, space-separated). After
the last line of the tests, if the program's side never broke the protocol nor left (an exit, a
``SystemExit`` or ``KeyboardInterrupt`` out of one of its functions, a malformed reply), the tester
writes the nonce on the verdict pipe; the evaluator holds the other end.
"""

from __future__ import annotations

import builtins
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from fewstep.sandbox.wire import ProtocolError, decode, encode, read_message, write_message


class ProgramLeft(BaseException):
    """The program's side broke the protocol or left; the run fails whatever the tests do next."""


class RemoteError(Exception):
    """An exception of the program's that is not one of Python's built-in exceptions."""


class _Channel:
    def __init__(self, requests: int, replies: int) -> None:
        self.requests, self.replies = requests, replies
        self.broken: str | None = None
        self.remotes: dict[int, Remote] = {}

    def ask(self, op: str, handle: int | None = None, *args: Any, **kwargs: Any) -> Any:
        """Send one request and return the decoded result, raising what the program raised."""
        if self.broken:
            raise ProgramLeft(self.broken)
        try:
            message = {"op": op, "h": handle, "args": encode(list(args), _sendable),
                       "kwargs": {"d": [[k, encode(v, _sendable)] for k, v in kwargs.items()]}}
        except (ValueError, RecursionError) as e:
            raise TypeError(f"cannot send this to the program: {e}") from None
        try:
            write_message(self.requests, message)
            kind, value = self.unpack(read_message(self.replies))
        except (OSError, EOFError, ProtocolError, RecursionError, MemoryError) as e:
            self.broken = f"the program's side broke the channel: {type(e).__name__}: {e}"
            raise ProgramLeft(self.broken) from None
        if kind == "r":
            return value
        name, text = value
        if kind == "x":
            self.broken = f"the program raised {name} ({text}) out of one of its functions"
            raise ProgramLeft(self.broken)
        raise _exception(name, text)

    def unpack(self, reply: Any) -> tuple[str, Any]:
        """("r", the decoded result) or ("e" | "x", [exception name, message]); ProtocolError if malformed."""
        if type(reply) is not dict or len(reply) != 1:
            raise ProtocolError("malformed reply")
        ((kind, value),) = reply.items()
        if kind == "r":
            return kind, decode(value, self.remote)
        if kind not in ("e", "x") or type(value) is not list or len(value) != 2 or \
                not all(type(v) is str for v in value):
            raise ProtocolError("malformed reply")
        return kind, value

    def remote(self, n: int) -> Remote:
        if n not in self.remotes:
            self.remotes[n] = Remote(self, n)
        return self.remotes[n]


def _exception(name: str, text: str) -> Exception:
    """The program's exception here: a built-in exception as itself, anything else as RemoteError."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            return cls(text)
        except Exception:  # a constructor that wants other arguments (UnicodeDecodeError)
            pass
    return RemoteError(f"{name}: {text}")


def _sendable(x: Any) -> Any:
    """What the tests may pass to the program beyond plain data: its own objects back, and plain objects
    of the tests (attributes only; no functions: the program must never call back into this process)."""
    if isinstance(x, Remote):
        return {"h": x._handle}
    attrs = getattr(x, "__dict__", None)
    if type(attrs) is dict and not callable(x) and not isinstance(x, type) and type(x).__module__ == "__main__":
        return {"o": [type(x).__name__, encode(attrs, _sendable)]}
    raise ValueError(f"a {type(x).__name__} cannot be sent to the program")


class Remote:
    """An object of the program's process, reached through its handle."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel: _Channel, handle: int) -> None:
        self._channel, self._handle = channel, handle

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.ask("call", self._handle, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._channel.ask("getattr", self._handle, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Remote.__slots__:
            object.__setattr__(self, name, value)
        else:
            self._channel.ask("setattr", self._handle, name, value)

    def __iter__(self) -> Any:
        it = self._channel.ask("iter", self._handle)
        return it if isinstance(it, Remote) else iter(it)

    def __next__(self) -> Any:
        return self._channel.ask("next", self._handle)

    def __len__(self) -> int:
        return self._channel.ask("len", self._handle)

    def __getitem__(self, key: Any) -> Any:
        return self._channel.ask("getitem", self._handle, key)

    def __contains__(self, item: Any) -> bool:
        return self._channel.ask("contains", self._handle, item) is True

    def __repr__(self) -> str:
        text = self._channel.ask("repr", self._handle)
        return text if type(text) is str else "<program object>"

    def __str__(self) -> str:
        text = self._channel.ask("str", self._handle)
        return text if type(text) is str else "<program object>"


def _names(code: Any) -> set[str]:
    """Every name the code (and the functions it defines) may look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def test_namespace(channel: _Channel, checks: Any, shadowing: set[str]) -> dict[str, Any]:
    """The tests' globals: the program's names that the tests use, as modules or stand-ins.

    A program's name that is also a built-in (``abs``, ``len``, ``isinstance``...) stays the built-in, and
    one named like a standard module is that module imported here, unless the name is in ``shadowing``
    (the function under test may have such a name); another module of the program is imported here
    afresh when it is a standard one."""
    try:
        write_message(channel.requests, {"op": "globals", "names": sorted(_names(checks))})
        reply = read_message(channel.replies)
        if type(reply) is not dict or type(reply.get("r")) is not dict:
            raise ProtocolError("malformed globals")
        found = reply["r"]
    except (OSError, EOFError, ProtocolError, RecursionError, MemoryError) as e:
        channel.broken = f"the program did not start: {type(e).__name__}: {e}"
        raise ProgramLeft(channel.broken) from None
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, value in found.items():
        if type(name) is not str or (hasattr(builtins, name) and name not in shadowing):
            continue
        if name in sys.stdlib_module_names and name not in shadowing:
            namespace[name] = _module(name)  # whatever the program bound to that name
            continue
        module = value.get("m") if type(value) is dict and len(value) == 1 else None
        if type(module) is str:
            if module.partition(".")[0] in sys.stdlib_module_names:
                namespace[name] = _module(module)
            continue
        namespace[name] = decode(value, channel.remote)
    return namespace


def _module(name: str) -> Any:
    __import__(name)
    return sys.modules[name]


def _read_payload(fd: int) -> tuple[str, str, set[str]]:
    """The test code, the nonce and the built-in names the program may shadow (``NONCE\\nNAMES\\nTESTS``),
    read from (and then closing) the payload descriptor."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    nonce, names, tests = b"".join(chunks).decode("utf-8").split("\n", 2)
    return tests, nonce, set(names.split())


def main(argv: list[str]) -> None:
    tests, nonce, shadowing = _read_payload(int(argv[0]))
    verdict_fd, channel = int(argv[1]), _Channel(int(argv[2]), int(argv[3]))
    checks = compile(tests, "<tests>", "exec")
    exec(checks, test_namespace(channel, checks, shadowing))
    os.close(channel.requests)
    if channel.broken is None:
        sys.stdout.flush()
        os.write(verdict_fd, nonce.encode("ascii"))


if __name__ == "__main__":
    main(sys.argv[1:])
