"""The message format between a sandboxed program and the process that runs its tests.

Both sides run in jails of their own (see :mod:`fewstep.sandbox.jail`) and meet only on two pipes:
requests go from the tester to the program, replies come back. A message is a 4-byte big-endian
length and that many bytes of JSON (written here, parsed by json's C scanner: ``import json`` would
double the start-up time of each jailed interpreter). Values are JSON with one-key objects as tags, so the tester
rebuilds only plain data, never an object of a class the program chose::

    None, bool, str, small int   as themselves          {"i": hex}        large int
    list                         [...]                  {"f": repr}       float (nan, inf included)
    {"t": [...]} tuple           {"s": [...]} set       {"fs": [...]}     frozenset
    {"d": [[k, v], ...]} dict    {"b": hex} bytes       {"ba": hex}       bytearray
    {"c": [re, im]} complex      {"h": n} the program's object number n (a handle)
    {"o": [class name, {"d": attributes}]}   a plain object of the tests, sent to the program

This file is run inside the jails from its text (neither side imports fewstep): it must stay
standard library only and import nothing at module level but what both sides need.
"""

from __future__ import annotations

import _json  # the C parts of json only: ``import json`` pulls in ``re`` and costs more than the interpreter
import os

TYPE_CHECKING = False  # typing is not imported at run time: every import slows down each run
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 200  # nesting of containers in one value
_SMALL_INT = 1 << 53  # ints beyond this travel as hex (no 4300-digit limit, exact in every JSON reader)
_SIMPLE = (type(None), bool, str)


class ProtocolError(Exception):
    """A message that breaks the format: too long, cut short, not JSON, or an unknown tag."""


class _Context:
    """What json's C scanner reads from its context: strict JSON, no hooks, no NaN or Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # it reads the attributes only
_quote = _json.encode_basestring_ascii


def dumps(v: Any) -> str:
    """JSON text of a wire value (None, bool, int, str, lists, dicts with string keys), ASCII only."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if type(v) is int:
        return int.__repr__(v)
    if type(v) is str:
        return _quote(v)
    if type(v) is list:
        return "[" + ",".join([dumps(x) for x in v]) + "]"
    if type(v) is dict:
        return "{" + ",".join([_quote(str(k)) + ":" + dumps(x) for k, x in v.items()]) + "}"
    raise ValueError(f"not a wire value: {type(v).__name__}")


def loads(text: str) -> Any:
    """Parse JSON text (the whole of it) with json's C scanner; ValueError when it is not JSON."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("empty message") from None
    if end != len(text):
        raise ValueError("trailing data")
    return value


def write_message(fd: int, value: Any) -> None:
    """Send one JSON value: its length (4 bytes, big-endian), then its bytes."""
    data = dumps(value).encode("ascii")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the limit")
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> Any:
    """Receive one JSON value; EOFError when the other side closed, ProtocolError when it is malformed."""
    n = int.from_bytes(_read_exactly(fd, 4), "big")
    if n > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {n} bytes is over the limit")
    try:
        return loads(_read_exactly(fd, n).decode("ascii"))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"message is not JSON: {e}") from None


def encode(x: Any, other: Callable[[Any], Any], depth: int = 0) -> Any:
    """A value in the wire format; ``other(x)`` encodes what is not plain data (or raises TypeError)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply to send")
    if x is None or type(x) in _SIMPLE:
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        v = int.__index__(x)
        return v if -_SMALL_INT < v < _SMALL_INT else {"i": hex(v)}
    if isinstance(x, float):
        return {"f": float.__repr__(x)}
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, complex):
        return {"c": [float.__repr__(x.real), float.__repr__(x.imag)]}
    if isinstance(x, (bytes, bytearray)):
        return {"ba" if isinstance(x, bytearray) else "b": bytes(x).hex()}
    d = depth + 1
    if isinstance(x, list):
        return [encode(v, other, d) for v in list.__iter__(x)]
    if isinstance(x, tuple):
        return {"t": [encode(v, other, d) for v in tuple.__iter__(x)]}
    if isinstance(x, (set, frozenset)):
        return {"fs" if isinstance(x, frozenset) else "s": [encode(v, other, d) for v in set(x)]}
    if isinstance(x, dict):
        return {"d": [[encode(k, other, d), encode(v, other, d)] for k, v in dict.items(x)]}
    return other(x)


def decode(v: Any, handle: Callable[[int], Any], obj: Callable[[str, dict], Any] | None = None, depth: int = 0) -> Any:
    """The value a wire value stands for; ``handle(n)`` rebuilds handles, ``obj`` plain objects (None:
    refused). Anything else raises ProtocolError."""
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    if v is None or type(v) in (bool, int, str):
        return v
    d = depth + 1
    if type(v) is list:
        return [decode(x, handle, obj, d) for x in v]
    if type(v) is not dict or len(v) != 1:
        raise ProtocolError(f"not a wire value: {type(v).__name__}")
    ((tag, x),) = v.items()
    try:
        return _decode_tagged(tag, x, handle, obj, d)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ProtocolError(f"bad {tag!r} value: {e}") from None


def _decode_tagged(tag: str, x: Any, handle: Callable[[int], Any], obj: Callable[[str, dict], Any] | None,
                   depth: int) -> Any:
    """The value of a one-key object ``{tag: x}`` whose contents sit at ``depth``."""
    scalar = _DECODE_SCALAR.get(tag)
    if scalar is not None:
        return scalar(x)
    if tag == "h" and type(x) is int:
        return handle(x)
    if tag == "o" and obj is not None:
        name, attrs = x
        return obj(_text(name), decode(attrs, handle, obj, depth))
    return _decode_container(tag, [decode(y, handle, obj, depth) for y in _items(x)])


def _decode_container(tag: str, items: list) -> Any:
    """The tuple, set, frozenset or dict (from key-value pairs) that decoded ``items`` tagged ``tag`` stand for."""
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "fs":
        return frozenset(items)
    if tag == "d" and all(type(p) is list and len(p) == 2 for p in items):
        return {k: val for k, val in items}
    raise ProtocolError(f"unknown tag {tag!r}")


def _decode_complex(x: Any) -> complex:
    re, im = x
    return complex(float(_text(re)), float(_text(im)))


_DECODE_SCALAR: dict[str, Callable[[Any], Any]] = {  # tags of values that hold no other wire values
    "i": lambda x: int(_text(x), 16),
    "f": lambda x: float(_text(x)),
    "c": _decode_complex,
    "b": lambda x: bytes.fromhex(_text(x)),
    "ba": lambda x: bytearray.fromhex(_text(x)),
}


def _text(x: Any) -> str:
    if type(x) is not str:
        raise ProtocolError("expected a string")
    return x


def _items(x: Any) -> list:
    if type(x) is not list:
        raise ProtocolError("expected a list")
    return x
