"""What a sandboxed run reports: how it ended (one of :data:`STATUSES`), its output and its duration."""

from __future__ import annotations

import signal
from dataclasses import dataclass

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "error")


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


def classify(returncode: int, timed_out: bool, over_output: bool, out_of_cpu: bool, stderr: str) -> str:
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
