"""Helpers shared by the sandbox tests (tests/test_sandbox*.py): a program that must always pass, what
sandbox runs leave behind, and the check that a hostile program was contained."""

from __future__ import annotations

import glob
import os
import tempfile

from fewstep.sandbox.jail import SandboxResult

NORMAL_PROGRAM = "print(sum(range(10)))"


def leftovers() -> set[str]:
    """Sandbox working directories and this process's cgroups that currently exist (other processes may
    run sandboxes at the same time)."""
    dirs = set(glob.glob(os.path.join(tempfile.gettempdir(), "fewstep-sandbox-*")))
    mine = f"fewstep-sandbox-{os.getpid()}-*"
    cgroups = set(glob.glob(f"/sys/fs/cgroup/*/{mine}")) | set(glob.glob(f"/sys/fs/cgroup/{mine}"))
    return dirs | cgroups


def assert_contained(result: SandboxResult) -> None:
    """Not passed, and ended by the sandbox's own verdict (structural: no wall-clock bound, which a
    loaded machine would break)."""
    assert not result.passed, result
    assert result.status in ("failed", "timeout", "memory", "killed"), result
