"""Running untrusted Python programs (model-written code and its tests), each in a jail of its own.

A program never runs in the evaluator's process. Each run gets (threat model: docs/security.md):

* a kernel-level jail (:mod:`fewstep.sandbox.kernel`, bubblewrap): new user, mount, PID, network, IPC
  and UTS namespaces; a root holding only the shared libraries, the standard library and a fresh
  64 MiB tmpfs working directory with the program in it; no network; its own ``/proc``;
* a minimal environment and an interpreter started with ``-s -S`` (standard library only) and
  ``PYTHONHASHSEED=0`` so set and dict orders are reproducible;
* its own session and process group, killed as a whole (SIGKILL) on timeout and after every run;
* limits set before the jail starts: address space (``memory_mb``), CPU seconds, file size, no core
  files; as root, per-run cgroups capping the number of tasks (``pids``) and all the memory the run
  charges (heap, memfds, tmpfs files); otherwise ``RLIMIT_NPROC`` at the user's count plus a margin;
* :mod:`fewstep.sandbox.child` as the first program inside: an audit hook (defence in depth), then the
  program, then (with tests) answers to the tester's calls.

With tests, a second jail of the same kind runs :mod:`fewstep.sandbox.tester`, which executes the
tests against the program's functions through two pipes and alone writes the verdict (see
:func:`run_tests`); the two jails share nothing else.

Where no jail can be made, :func:`run_program` raises :class:`~fewstep.errors.SandboxUnavailableError`
unless the user opted out (``--unsafe-exec``, ``FEWSTEP_UNSAFE_EXEC=1``): the run then happens in a
temporary directory with the limits above, new network and PID namespaces where ``unshare`` works
(capabilities dropped through ``setpriv`` as root) and the audit hook.

Output is read through pipes and only the last ``max_output_bytes`` of each stream are kept; a program
that writes more than that in total is killed, so a program printing gigabytes cannot exhaust the
evaluator's memory.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fewstep.errors import SandboxUnavailableError
from fewstep.sandbox import kernel

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "error")

PROGRAM_FILE = "main.py"
UNSAFE_ENV = "FEWSTEP_UNSAFE_EXEC"  # "1": run without the kernel jail where it cannot be made
MAX_PROCESSES = 64  # processes and threads one run may have (cgroup) or add to the user's count (rlimit)
MAX_FILE_BYTES = 64 * 1024 * 1024  # largest file a program may write
_READ_CHUNK = 65536
_KILL_GRACE_S = 0.5  # how long to keep reading the pipes after the child exited or everything was killed
_PYTHON_FLAGS = ("-s", "-S", "-B", "-X", "utf8")
_CGROUP_BASES = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")
_cgroup_names = itertools.count()


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exited with status 0 within the limits
    status: str  # one of STATUSES
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str  # the last max_output_bytes of standard output
    stderr: str  # the last max_output_bytes of standard error
    wall_s: float
    output_truncated: bool = False  # some output was dropped (or the output limit killed the run)

    def summary(self) -> str:
        """One line saying how the run ended: the status, and for failures the last line of stderr."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return f"{self.status}: {lines[-1]}" if lines and not self.passed else self.status


@dataclass(frozen=True)
class Isolation:
    """Which kernel-level protections runs get on this machine (detected once per process)."""

    command_prefix: tuple[str, ...]  # what the interpreter is started under (unshare, setpriv)
    network_namespace: bool
    pid_namespace: bool
    no_capabilities: bool
    process_limit: str  # "cgroup", "rlimit" or "none"
    cgroup_base: str | None = None  # where per-run pids cgroups are made, when process_limit is "cgroup"


@functools.lru_cache(maxsize=2)
def _script(name: str) -> str:
    """A ``-c`` script running :mod:`fewstep.sandbox.wire` and then ``name`` (``child.py`` or ``tester.py``)
    as ``__main__``, from their text: the jailed interpreters import nothing of fewstep."""
    here = Path(__file__).parent
    wire = (here / "wire.py").read_text(encoding="utf-8")
    main = (here / name).read_text(encoding="utf-8")
    return f"exec(compile({wire!r}, 'wire.py', 'exec'))\nexec(compile({main!r}, {name!r}, 'exec'))\n"


# ---------------------------------------------------------------------------------------------------
# Detecting what the machine allows (once per process).
# ---------------------------------------------------------------------------------------------------


def _starts_python(prefix: list[str]) -> bool:
    """Whether the interpreter starts and exits cleanly under the given command prefix."""
    try:
        done = subprocess.run(
            [*prefix, sys.executable, *_PYTHON_FLAGS, "-c", "pass"],
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


def _cgroup_base(candidates: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The first (base directory, control file) where a per-run cgroup with that control file can be made
    (root only), else None."""
    if os.geteuid() != 0:
        return None
    for base, control in candidates:
        probe = os.path.join(base, f"fewstep-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except OSError:
            continue
        try:
            if os.path.exists(os.path.join(probe, control)):
                return base, control
        finally:
            _remove_dir(probe)
    return None


def _pids_cgroup_base() -> str | None:
    """A cgroup directory where per-run cgroups with a ``pids.max`` can be made (root only), else None."""
    found = _cgroup_base(tuple((base, "pids.max") for base in _CGROUP_BASES))
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Detect (once) which namespaces, capability dropping and process cap work for this user."""
    prefix: tuple[str, ...] = ()
    flags = (False, False, False)
    for candidate, net, pid, caps in _candidate_prefixes():
        if _starts_python(candidate):
            prefix, flags = tuple(candidate), (net, pid, caps)
            break
    base = _pids_cgroup_base()
    if base is not None:
        limit = "cgroup"
    elif os.geteuid() != 0:
        limit = "rlimit"
    else:
        limit = "none"
    return Isolation(prefix, *flags, limit, base)


# ---------------------------------------------------------------------------------------------------
# Per-run cgroups: process cap and memory (all kinds: heap, tmpfs, memfd, page cache).
# ---------------------------------------------------------------------------------------------------


def _user_task_count(uid: int) -> int:
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


@functools.lru_cache(maxsize=1)
def _memory_cgroup_base() -> tuple[str, str] | None:
    """(base directory, limit file) where per-run memory cgroups can be made (root only), else None."""
    return _cgroup_base((("/sys/fs/cgroup/memory", "memory.limit_in_bytes"), ("/sys/fs/cgroup", "memory.max")))


@functools.cache
def _remove_stale_cgroups(base: str) -> None:
    """Remove (once per process) the empty per-run cgroups that killed evaluators left under ``base``."""
    for entry in Path(base).glob("fewstep-sandbox-*"):
        pid = entry.name.split("-")[2]
        if pid.isdigit() and not Path("/proc", pid).exists():
            _empty_cgroup(str(entry), patience_s=0.5)


def _new_cgroup(base: str, settings: dict[str, str]) -> str | None:
    """A fresh cgroup under ``base`` with the given control files written; None if that fails."""
    _remove_stale_cgroups(base)
    path = os.path.join(base, f"fewstep-sandbox-{os.getpid()}-{next(_cgroup_names)}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
        for name, value in settings.items():
            Path(path, name).write_text(value)
    except OSError:
        _remove_dir(path)
        return None
    return path


def _make_cgroups(max_tasks: int, memory_bytes: int) -> list[str]:
    """Per-run cgroups capping the number of tasks and the memory; those that could be made."""
    made = []
    base = isolation().cgroup_base
    if base is not None:
        pids = _new_cgroup(base, {"pids.max": str(max_tasks)})
        if pids:
            made.append(pids)
    memory = _memory_cgroup_base()
    if memory is not None:
        settings = {memory[1]: str(memory_bytes)}
        if memory[1] == "memory.max":
            settings["memory.swap.max"] = "0"
        group = _new_cgroup(memory[0], settings)
        if group:
            made.append(group)
    return made


def _memory_exhausted(cgroups: list[str]) -> bool:
    """Whether a run's memory cgroup hit its limit (the kernel then refuses or kills)."""
    for path in cgroups:
        for name in ("memory.failcnt", "memory.events"):
            try:
                text = Path(path, name).read_text()
            except OSError:
                continue
            if name == "memory.failcnt" and int(text.strip() or 0) > 0:
                return True
            events = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            if int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0:
                return True
    return False


def _empty_cgroup(path: str, patience_s: float = 5.0) -> None:
    """SIGKILL every process in the cgroup until it is empty, then remove it."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    while time.monotonic() < deadline and not _remove_dir(path):
        time.sleep(0.005)


def _remove_dir(path: str) -> bool:
    """rmdir that reports success instead of raising."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Starting the child.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    memory_bytes: int
    cpu_s: int
    nproc: int | None  # RLIMIT_NPROC value, or None to leave it
    cgroup_procs: tuple[str, ...]  # cgroup.procs files to join


def _apply_limits(limits: _Limits) -> None:
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


def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment the child gets."""
    return {
        "HOME": workdir,
        "TMPDIR": workdir,
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }


def unsafe_allowed() -> bool:
    """Whether the user opted out of the kernel jail (``--unsafe-exec``, or FEWSTEP_UNSAFE_EXEC=1)."""
    return os.environ.get(UNSAFE_ENV) == "1"


def jail_mode() -> str:
    """``kernel`` where a bwrap jail can be made; ``unsafe`` where it cannot and the user opted out.

    Otherwise raises :class:`~fewstep.errors.SandboxUnavailableError` naming what is missing."""
    reason = kernel.unavailable()
    if reason is None:
        return "kernel"
    if unsafe_allowed():
        return "unsafe"
    raise SandboxUnavailableError(f"cannot run model-written code safely: {reason}; pass --unsafe-exec to run it "
                                  "with process limits only (it can then read and change your files)")


@dataclass
class _Channels:
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


def _channels(code: str, tests: str | None, nonce: str, shadowing: tuple[str, ...]) -> _Channels:
    channels = _Channels(_file_fd(code.encode("utf-8")))
    if tests is not None:
        channels.payload = _file_fd(f"{nonce}\n{' '.join(shadowing)}\n{tests}".encode())
        channels.requests, channels.replies, channels.verdict = os.pipe(), os.pipe(), os.pipe()
        os.set_blocking(channels.verdict[0], False)
    return channels


def _start(workdir: str | None, limits: _Limits, entry: list[str], fds: tuple[int, ...],
           program: int | None) -> subprocess.Popen:
    """Start ``python entry`` in its own session, with the limits applied before exec and the descriptors
    ``fds`` kept open: in a fresh kernel jail when ``workdir`` is None (``program``, if given, copied to
    its ``main.py``), else in ``workdir`` (``--unsafe-exec``; ``program`` written there)."""
    if workdir is None:
        env = _child_env(kernel.SANDBOX_DIR)
        disk = kernel.DISK_BYTES if program is not None else 1 << 20
        command = kernel.command([*_PYTHON_FLAGS, *entry], program, disk, env)
        cwd = None
    else:
        if program is not None:
            with open(os.path.join(workdir, PROGRAM_FILE), "wb") as f:
                f.write(os.read(program, 1 << 30))
        env = _child_env(workdir)
        command = [*isolation().command_prefix, sys.executable, *_PYTHON_FLAGS, *entry]
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
        preexec_fn=functools.partial(_apply_limits, limits),
    )


# ---------------------------------------------------------------------------------------------------
# Watching the child: output, exit, deadline.
# ---------------------------------------------------------------------------------------------------


class _Tail:
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
    procs: list[subprocess.Popen], tails: dict[int, _Tail], deadline: float, max_total: int
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
                    deadline = min(deadline, time.monotonic() + _KILL_GRACE_S)
                if sum(t.total for t in tails.values()) > max_total:
                    return False, True
        finally:
            for fd in exit_fds:
                os.close(fd)
    return False, False


def _read_into(fd: int, tail: _Tail) -> bool:
    """Read one chunk from a readable pipe into the tail; False at end of file."""
    chunk = os.read(fd, _READ_CHUNK)
    if chunk:
        tail.add(chunk)
    return bool(chunk)


def _drain(tails: dict[int, _Tail], grace_s: float) -> None:
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


def _status(returncode: int, timed_out: bool, over_output: bool, out_of_cpu: bool, stderr: str) -> str:
    """Classify how the run ended."""
    if timed_out or returncode == -signal.SIGXCPU or (returncode != 0 and out_of_cpu):
        return "timeout"
    if over_output:
        return "killed"
    if returncode == 0:
        return "passed"
    if "MemoryError" in stderr:
        return "memory"
    if returncode < 0:
        return "killed"
    return "failed"


# ---------------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------------


def run_program(
    code: str,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    max_output_bytes: int = 1_000_000,
    *,
    guard: bool = True,
    tests: str | None = None,
    shadowing: tuple[str, ...] = (),
) -> SandboxResult:
    """Run Python program text in a fresh jail and report how it ended.

    ``passed`` is true when the program exited with status 0 before ``timeout_s`` (wall clock) and
    within ``cpu_s`` CPU seconds (default: the timeout rounded down, plus two), ``memory_mb`` of memory,
    and ``max_output_bytes`` of output (stdout and stderr together; more kills the run). With ``tests``,
    the verdict is the tests' instead (see :func:`run_tests`). ``guard=False`` leaves out the in-process
    guard, so that the kernel-level limits and the verdict can be tested without it.
    """
    mode = jail_mode()
    started = time.monotonic()
    cpu_limit = max(1, cpu_s if cpu_s is not None else int(timeout_s) + 2)
    memory_bytes = memory_mb * 1024 * 1024
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="fewstep-sandbox-") if mode == "unsafe" else None
    cgroups = _make_cgroups(MAX_PROCESSES, memory_bytes + kernel.DISK_BYTES)
    channels = _channels(code, tests, nonce, shadowing)
    procs: list[subprocess.Popen] = []
    try:
        limits = _Limits(
            memory_bytes=memory_bytes,
            cpu_s=cpu_limit,
            nproc=None if os.geteuid() == 0 and cgroups else _user_task_count(os.getuid()) + MAX_PROCESSES,
            cgroup_procs=tuple(os.path.join(c, "cgroup.procs") for c in cgroups),
        )
        try:
            if tests is not None:
                tester_limits = dataclasses.replace(limits, cgroup_procs=())
                tester = channels.tester_side()
                entry = ["-c", _script("tester.py"), *map(str, tester)]
                procs.append(_start(workdir, tester_limits, entry, tester, None))
            fds = channels.program_side()
            if tests is None and not guard:
                entry = [PROGRAM_FILE]
            else:
                entry = ["-c", _script("child.py"), *map(str, fds), *([] if guard else ["--no-guard"])]
            procs.append(_start(workdir, limits, entry, fds, channels.program))
        except (OSError, subprocess.SubprocessError) as e:
            for proc in procs:
                _kill_group(proc.pid)
                proc.wait()
                _close_pipes(proc)
            return SandboxResult(False, "error", None, "", f"sandbox could not start: {e}", time.monotonic() - started)
        channels.close_passed()
        result = _supervise(procs, cgroups, time.monotonic() + timeout_s, limits.cpu_s, max_output_bytes, started,
                            signal_exits=mode == "kernel")
        if tests is None:
            return result
        assert channels.verdict is not None
        if _read_verdict(channels.verdict[0]) == nonce:
            return dataclasses.replace(result, passed=True, status="passed")
        if result.status == "passed" or (result.status == "killed" and not result.output_truncated):
            return dataclasses.replace(result, passed=False, status="failed")  # the program left or was stopped
        return result
    finally:
        channels.close()
        for cgroup in cgroups:
            _empty_cgroup(cgroup)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _close_pipes(proc: subprocess.Popen) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _read_verdict(fd: int | None) -> str:
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


def _supervise(
    procs: list[subprocess.Popen], cgroups: list[str], deadline: float, cpu_s: int, max_output_bytes: int,
    started: float, signal_exits: bool = False,
) -> SandboxResult:
    """Watch the started children to the end, kill everything they left behind, and build the result.

    The last child is the program: the result's return code and status are its (the tester's verdict,
    when there is one, is applied by :func:`run_program`); stdout is the program's, stderr the
    program's followed by the tester's. ``signal_exits``: the children are bwrap, which reports a
    program killed by signal N as exit status 128 + N."""
    tails: dict[int, _Tail] = {}
    streams: list[tuple[_Tail, _Tail]] = []  # per child: (stdout, stderr)
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        streams.append((_Tail(max_output_bytes), _Tail(max_output_bytes)))
        tails[proc.stdout.fileno()], tails[proc.stderr.fileno()] = streams[-1]
    try:
        timed_out, over_output = _watch(procs, tails, deadline, max_output_bytes)
    finally:
        for proc in procs:
            _kill_group(proc.pid)
        out_of_memory = _memory_exhausted(cgroups)
        for cgroup in cgroups:
            _empty_cgroup(cgroup)
        _drain(tails, _KILL_GRACE_S)
        reaped = [_reap(proc) for proc in procs]
        for proc in procs:
            _close_pipes(proc)
    returncode, cpu_used = reaped[-1]
    if signal_exits and 128 < returncode < 128 + signal.NSIG:
        returncode = -(returncode - 128)
    out = streams[-1][0]
    stderr = "".join(err.text() for _, err in reversed(streams))
    status = _status(returncode, timed_out, over_output, cpu_used >= cpu_s - 0.01, stderr)
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


def run_tests(program: str, test_code: str, timeout_s: float = 10, memory_mb: int = 1024,
              shadowing: tuple[str, ...] = ()) -> SandboxResult:
    """Run a program in a fresh jail of its own and its test code in another; the tests decide the verdict.

    The tests never run in the program's process: :mod:`fewstep.sandbox.tester` executes them in a
    separate jail (its own PID, mount, network and IPC namespaces) where the program's functions are
    stand-ins that send their arguments to the program's process and get plain data back over two
    pipes (:mod:`fewstep.sandbox.wire`). The run passes only if the tester ran the tests to the end with
    the program's side answering throughout, and then wrote the run's fresh random nonce on a pipe
    whose read end only the evaluator holds; the program never sees the tests, the nonce or that pipe.
    A program's function named like a built-in (``abs``) replaces it in the tests only when the name is
    in ``shadowing`` (the function under test may be called ``sum``).
    """
    return run_program(program, timeout_s=timeout_s, memory_mb=memory_mb, tests=test_code, shadowing=shadowing)
