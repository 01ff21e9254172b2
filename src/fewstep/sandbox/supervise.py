"""Watching started children to the end: reading their output (keeping a bounded tail), noticing their
exit and the deadline, killing everything they left behind, and building the run's result."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time

from fewstep.sandbox.cgroups import empty_cgroup, memory_exhausted
from fewstep.sandbox.result import SandboxResult, classify

_READ_CHUNK = 65536
KILL_GRACE_S = 0.5  # how long to keep reading the pipes after the child exited or everything was killed


class Tail:
    """Keeps the last ``limit`` bytes written to a stream and counts all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        """Count a chunk and keep it, dropping the oldest bytes once twice the limit is held."""
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        """The kept tail (at most ``limit`` bytes), decoded as UTF-8."""
        return bytes(self.data[-self.limit :] if self.limit else b"").decode("utf-8", errors="replace")

    @property
    def truncated(self) -> bool:
        """Whether more was written than the tail holds."""
        return self.total > self.limit


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid and process group stay reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _exit_fd(pid: int) -> int | None:
    """A pidfd that becomes readable when the child exits, where the platform has them."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _watch(
    procs: list[subprocess.Popen], tails: dict[int, Tail], deadline: float, max_total: int
) -> tuple[bool, bool]:
    """Read output until the children have exited and closed their pipes, the deadline, or too much output.

    The first child leads: once it has exited the others get a short grace (the program's side, which
    only answers the tester, leaves when the tester closes the channel). Returns (timed_out,
    over_output_limit); timed_out means the leader had not exited. The children are not reaped here.
    """
    streams = set(tails)
    exit_fds = {fd: proc for proc in procs if (fd := _exit_fd(proc.pid)) is not None}
    running = set(procs)
    leader = procs[0]
    with selectors.DefaultSelector() as sel:
        for fd in (*streams, *exit_fds):
            sel.register(fd, selectors.EVENT_READ)
        try:
            while running or streams:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return leader in running, False
                wait = remaining if len(exit_fds) == len(procs) else min(remaining, 0.01)
                for key, _ in sel.select(wait):
                    if key.fd in exit_fds:
                        running.discard(exit_fds[key.fd])
                        sel.unregister(key.fd)
                    elif not _read_into(key.fd, tails[key.fd]):
                        streams.discard(key.fd)
                        sel.unregister(key.fd)
                for proc in [p for p in running if p.pid not in {q.pid for q in exit_fds.values()}]:
                    if _has_exited(proc.pid):
                        running.discard(proc)
                if leader not in running:
                    deadline = min(deadline, time.monotonic() + KILL_GRACE_S)
                if sum(t.total for t in tails.values()) > max_total:
                    return False, True
        finally:
            for fd in exit_fds:
                os.close(fd)
    return False, False


def _read_into(fd: int, tail: Tail) -> bool:
    """Read one chunk from a readable pipe into the tail; False at end of file."""
    chunk = os.read(fd, _READ_CHUNK)
    if chunk:
        tail.add(chunk)
    return bool(chunk)


def _drain(tails: dict[int, Tail], grace_s: float) -> None:
    """After everything was killed, read what is left in the pipes (bounded by the pipe buffers)."""
    deadline = time.monotonic() + grace_s
    streams = set(tails)
    with selectors.DefaultSelector() as sel:
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        while streams and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                if not _read_into(key.fd, tails[key.fd]):
                    streams.discard(key.fd)
                    sel.unregister(key.fd)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group (the child is its leader and not yet reaped)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for the child; its return code and the CPU seconds it and its reaped descendants used.

    The CPU time tells a run stopped by RLIMIT_CPU apart even where the ``unshare`` wrapper reports the
    child's death by signal as a plain failure.
    """
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return proc.wait(), 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _close_pipes(proc: subprocess.Popen) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def abandon(procs: list[subprocess.Popen]) -> None:
    """Kill the children started so far (when a later one could not start), reap them, close their pipes."""
    for proc in procs:
        _kill_group(proc.pid)
        proc.wait()
        _close_pipes(proc)


def supervise(
    procs: list[subprocess.Popen], cgroups: list[str], deadline: float, cpu_s: int, max_output_bytes: int,
    started: float, signal_exits: bool = False,
) -> SandboxResult:
    """Watch the started children to the end, kill everything they left behind, and build the result.

    The last child is the program: the result's return code and status are its (the tester's verdict,
    when there is one, is applied by :func:`fewstep.sandbox.jail.run_program`); stdout is the program's,
    stderr the program's followed by the tester's. ``signal_exits``: the children are bwrap, which
    reports a program killed by signal N as exit status 128 + N."""
    tails: dict[int, Tail] = {}
    streams: list[tuple[Tail, Tail]] = []  # per child: (stdout, stderr)
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        streams.append((Tail(max_output_bytes), Tail(max_output_bytes)))
        tails[proc.stdout.fileno()], tails[proc.stderr.fileno()] = streams[-1]
    try:
        timed_out, over_output = _watch(procs, tails, deadline, max_output_bytes)
    finally:
        for proc in procs:
            _kill_group(proc.pid)
        out_of_memory = memory_exhausted(cgroups)
        for cgroup in cgroups:
            empty_cgroup(cgroup)
        _drain(tails, KILL_GRACE_S)
        reaped = [_reap(proc) for proc in procs]
        for proc in procs:
            _close_pipes(proc)
    returncode, cpu_used = reaped[-1]
    if signal_exits and 128 < returncode < 128 + signal.NSIG:
        returncode = -(returncode - 128)
    out = streams[-1][0]
    stderr = "".join(err.text() for _, err in reversed(streams))
    status = classify(returncode, timed_out, over_output, cpu_used >= cpu_s - 0.01, stderr)
    if status in ("failed", "killed") and out_of_memory:
        status = "memory"
    return SandboxResult(
        passed=status == "passed",
        status=status,
        returncode=returncode,
        stdout=out.text(),
        stderr=stderr,
        wall_s=time.monotonic() - started,
        output_truncated=any(t.truncated for t in tails.values()) or over_output,
    )
