"""The descriptors of one run between the evaluator, the program's jail and the tester's jail: the program
text, the tests and nonce, the request and reply pipes, and the verdict pipe only the evaluator reads."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass


@dataclass
class Channels:
    """The descriptors of one run. Program side: the program text (kernel mode: copied into the jail by
    bwrap), then requests in and replies out. Tester side: the tests and the nonce (read once, then
    closed), requests out, replies in, and the verdict out; the evaluator keeps ``verdict_read``."""

    program: int
    payload: int | None = None
    requests: tuple[int, int] | None = None  # (read end: program, write end: tester)
    replies: tuple[int, int] | None = None  # (read end: tester, write end: program)
    verdict: tuple[int, int] | None = None  # (read end: evaluator, write end: tester)

    def program_side(self) -> tuple[int, ...]:
        """The descriptors the program's jail gets besides the program text: requests in, replies out."""
        return (self.requests[0], self.replies[1]) if self.requests and self.replies else ()

    def tester_side(self) -> tuple[int, ...]:
        """The tester's arguments, in order: payload, verdict out, requests out, replies in."""
        assert self.payload is not None and self.requests and self.replies and self.verdict
        return self.payload, self.verdict[1], self.requests[1], self.replies[0]

    def close_passed(self) -> None:
        """Close the evaluator's copies of everything the children got (all but the verdict's read end)."""
        kept = self.verdict[0] if self.verdict else None
        for fd in self._all():
            if fd != kept:
                _close(fd)
        self.program, self.payload, self.requests, self.replies = -1, None, None, None
        self.verdict = (kept, -1) if kept is not None else None

    def close(self) -> None:
        for fd in self._all():
            _close(fd)

    def _all(self) -> list[int]:
        pairs = [p for p in (self.requests, self.replies, self.verdict) if p]
        fds = (self.program, self.payload, *(fd for p in pairs for fd in p))
        return [fd for fd in fds if fd is not None and fd >= 0]


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _file_fd(data: bytes) -> int:
    """A read-only descriptor of an unlinked temporary file holding ``data`` (pipes could fill up)."""
    fd, path = tempfile.mkstemp(prefix="fewstep-channel-")  # unlinked at once
    try:
        os.unlink(path)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_channels(code: str, tests: str | None, nonce: str, shadowing: tuple[str, ...]) -> Channels:
    """The descriptors of a run of ``code``; with ``tests``, also the tester's payload and the three pipes."""
    channels = Channels(_file_fd(code.encode("utf-8")))
    if tests is not None:
        channels.payload = _file_fd(f"{nonce}\n{' '.join(shadowing)}\n{tests}".encode())
        channels.requests, channels.replies, channels.verdict = os.pipe(), os.pipe(), os.pipe()
        os.set_blocking(channels.verdict[0], False)
    return channels


def read_verdict(fd: int | None) -> str:
    """What the tester wrote on its verdict pipe (everything it wrote: a nonce plus anything else is not the nonce)."""
    if fd is None:
        return ""
    data = b""
    while len(data) < 4096:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", errors="replace")
