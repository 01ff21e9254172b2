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

This module is the public API and runs one program from start to verdict; the parts live beside it:
:mod:`~fewstep.sandbox.machine` (what this machine allows), :mod:`~fewstep.sandbox.cgroups` (per-run
cgroups), :mod:`~fewstep.sandbox.spawn` (starting an interpreter with its limits),
:mod:`~fewstep.sandbox.channels` (program text, tests and pipes), :mod:`~fewstep.sandbox.supervise`
(output, exit, deadline, clean-up) and :mod:`~fewstep.sandbox.result` (:class:`SandboxResult`).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
import time

from fewstep.errors import SandboxUnavailableError
from fewstep.sandbox import kernel
from fewstep.sandbox.cgroups import empty_cgroup, make_cgroups
from fewstep.sandbox.channels import Channels, open_channels, read_verdict
from fewstep.sandbox.machine import Isolation, isolation, user_task_count
from fewstep.sandbox.result import STATUSES, SandboxResult
from fewstep.sandbox.spawn import MAX_FILE_BYTES, PROGRAM_FILE, Limits, script, start
from fewstep.sandbox.supervise import abandon, supervise

__all__ = [
    "MAX_FILE_BYTES", "MAX_PROCESSES", "PROGRAM_FILE", "STATUSES", "UNSAFE_ENV", "Isolation", "SandboxResult",
    "isolation", "jail_mode", "run_program", "run_tests", "unsafe_allowed",
]

UNSAFE_ENV = "FEWSTEP_UNSAFE_EXEC"  # "1": run without the kernel jail where it cannot be made
MAX_PROCESSES = 64  # processes and threads one run may have (cgroup) or add to the user's count (rlimit)


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


def _run_limits(memory_bytes: int, cpu_s: int, cgroups: list[str]) -> Limits:
    """The program's limits: the cgroups to join, else (not root, or no cgroup made) a process cap at the
    user's current task count plus :data:`MAX_PROCESSES`."""
    return Limits(
        memory_bytes=memory_bytes,
        cpu_s=cpu_s,
        nproc=None if os.geteuid() == 0 and cgroups else user_task_count(os.getuid()) + MAX_PROCESSES,
        cgroup_procs=tuple(os.path.join(c, "cgroup.procs") for c in cgroups),
    )


def _start_children(workdir: str | None, limits: Limits, channels: Channels, tests: str | None, guard: bool,
                    procs: list[subprocess.Popen]) -> None:
    """Start the tester (with tests; outside the run's cgroups) and then the program, appending each to
    ``procs`` as it starts; raises OSError or SubprocessError when one cannot start."""
    if tests is not None:
        tester_limits = dataclasses.replace(limits, cgroup_procs=())
        tester = channels.tester_side()
        entry = ["-c", script("tester.py"), *map(str, tester)]
        procs.append(start(workdir, tester_limits, entry, tester, None))
    fds = channels.program_side()
    if tests is None and not guard:
        entry = [PROGRAM_FILE]
    else:
        entry = ["-c", script("child.py"), *map(str, fds), *([] if guard else ["--no-guard"])]
    procs.append(start(workdir, limits, entry, fds, channels.program))


def _with_verdict(result: SandboxResult, verdict: str, nonce: str) -> SandboxResult:
    """The result of a run with tests: passed only when the tester wrote the run's nonce."""
    if verdict == nonce:
        return dataclasses.replace(result, passed=True, status="passed")
    if result.status == "passed" or (result.status == "killed" and not result.output_truncated):
        return dataclasses.replace(result, passed=False, status="failed")  # the program left or was stopped
    return result


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
    cgroups = make_cgroups(isolation().cgroup_base, MAX_PROCESSES, memory_bytes + kernel.DISK_BYTES)
    channels = open_channels(code, tests, nonce, shadowing)
    procs: list[subprocess.Popen] = []
    try:
        limits = _run_limits(memory_bytes, cpu_limit, cgroups)
        try:
            _start_children(workdir, limits, channels, tests, guard, procs)
        except (OSError, subprocess.SubprocessError) as e:
            abandon(procs)
            return SandboxResult(False, "error", None, "", f"sandbox could not start: {e}", time.monotonic() - started)
        channels.close_passed()
        result = supervise(procs, cgroups, time.monotonic() + timeout_s, limits.cpu_s, max_output_bytes, started,
                           signal_exits=mode == "kernel")
        if tests is None:
            return result
        assert channels.verdict is not None
        return _with_verdict(result, read_verdict(channels.verdict[0]), nonce)
    finally:
        channels.close()
        for cgroup in cgroups:
            empty_cgroup(cgroup)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


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
