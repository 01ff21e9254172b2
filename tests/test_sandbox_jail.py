"""The kernel jail (bubblewrap) against hostile programs: what a sandboxed program can see and reach.

Tests with ``guard=False`` leave out the in-process prelude to check the kernel-level limits alone; all
skip where this machine has no kernel jail.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from fewstep.sandbox.jail import run_program
from sandbox_helpers import assert_contained

pytestmark = pytest.mark.usefixtures("evaluator_survives")  # (conftest) nothing left behind, the evaluator still works


# --- the kernel jail (bubblewrap): what the program can see and reach ---------------------------------


def _jailed() -> bool:
    from fewstep.sandbox import kernel

    return kernel.unavailable() is None


needs_jail = pytest.mark.skipif(not _jailed(), reason="no kernel jail on this machine")


@needs_jail
@pytest.mark.parametrize("guard", [True, False])
def test_host_files_are_invisible(guard):
    here = os.path.abspath(__file__)
    # everything but the interpreter's own installation (sys.base_prefix, read-only) is absent
    paths = ["/etc/passwd", "/home", "/work", "/tmp", "/var", here, os.path.dirname(here), os.getcwd(),
             os.path.join(sys.base_prefix, "lib", f"python3.{sys.version_info.minor}", "site-packages", "torch")]
    code = (f"import os\nfor p in {paths!r}:\n"
            "    print(p, os.path.exists(p) and bool(os.listdir(p) if os.path.isdir(p) else 1))\n")
    result = run_program(code, timeout_s=5, guard=guard)
    assert result.passed, result
    seen = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    assert set(seen.values()) == {"False"}, seen


@needs_jail
def test_only_the_standard_library_is_importable():
    result = run_program("import json, sqlite3, hashlib\ntry:\n    import torch\nexcept ImportError:\n"
                         "    print('no torch')\ntry:\n    import fewstep\nexcept ImportError:\n"
                         "    print('no fewstep')")
    assert result.passed and result.stdout.split("\n")[:2] == ["no torch", "no fewstep"], result


@needs_jail
@pytest.mark.parametrize("guard", [True, False])
def test_host_processes_are_invisible(guard):
    code = "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    result = run_program(code, timeout_s=5, guard=guard)
    assert result.passed, result
    assert len(eval(result.stdout)) <= 2  # bwrap's init and the program


@needs_jail
@pytest.mark.parametrize("guard", [True, False])
def test_unix_sockets_on_the_host_are_unreachable(tmp_path, guard):
    path = str(tmp_path / "host.sock")
    listeners = []
    for address in (path, "\0fewstep-sandbox-test"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(address)
        s.listen(1)
        listeners.append(s)
    try:
        code = (f"import socket\nfor a in [{path!r}, {chr(0) + 'fewstep-sandbox-test'!r}]:\n"
                "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(a)\n        print('connected')\n"
                "    except OSError as e:\n        print(type(e).__name__)")
        result = run_program(code, timeout_s=5, guard=guard)
        assert "connected" not in result.stdout, result
    finally:
        for s in listeners:
            s.close()


@needs_jail
def test_memfd_counts_against_the_memory_limit():
    code = ("import os\nfd = os.memfd_create('hog')\nblock = b'x' * (1 << 20)\n"
            "for _ in range(1024):\n    os.write(fd, block)\nprint('wrote 1 GiB')")
    result = run_program(code, timeout_s=20, memory_mb=128, guard=False)
    assert_contained(result)
    assert "wrote" not in result.stdout


@needs_jail
def test_disk_is_bounded():
    code = ("block = b'x' * (1 << 20)\nwith open('big', 'wb') as f:\n    for _ in range(1024):\n"
            "        f.write(block)\nprint('wrote 1 GiB')")
    result = run_program(code, timeout_s=20, memory_mb=256)
    assert_contained(result)
    assert "wrote" not in result.stdout


@needs_jail
def test_nothing_persists_between_runs():
    assert run_program("open('left.txt', 'w').write('x')").passed
    result = run_program("import os\nprint(sorted(os.listdir('.')))")
    assert result.passed and result.stdout.strip() == "['main.py']", result
