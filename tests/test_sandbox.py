"""Hostile programs against the sandbox: each must be contained, reported as not passed, and leave the
evaluator, the files outside its working directory and later runs untouched.

Tests with ``guard=False`` leave out the in-process prelude to check the kernel-level limits alone; they
skip where this machine does not provide the namespace or process cap they rely on.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
from pathlib import Path

import pytest

from fewstep.sandbox import jail as sandbox
from fewstep.sandbox.jail import isolation, run_program, run_tests
from sandbox_helpers import NORMAL_PROGRAM, assert_contained

pytestmark = pytest.mark.usefixtures("evaluator_survives")  # (conftest) nothing left behind, the evaluator still works


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under root, with its mode and a hash of its content."""
    state = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (path.stat().st_mode, digest)
    return state


def _sandboxed_processes() -> list[int]:
    """Processes still running in a sandbox working directory (deleted or not)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "fewstep-sandbox-" in os.readlink(f"/proc/{name}/cwd"):
                found.append(int(name))
        except OSError:
            continue
    return found


@pytest.fixture
def outside(tmp_path: Path):
    """A directory outside the sandbox with a file in it; the test checks that nothing there changed."""
    root = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "keep.txt").write_text("precious\n")
    (root / "sub" / "inner.txt").write_text("also precious\n")
    before = _snapshot(root)
    yield root
    assert _snapshot(root) == before, "the sandboxed program changed files outside its directory"


def _needs(attribute: str):
    """Skip a guard=False test when this machine lacks the kernel protection it relies on."""
    return pytest.mark.skipif(not getattr(isolation(), attribute), reason=f"no {attribute} here: {isolation()}")


# --- ordinary behaviour -------------------------------------------------------------------------------


def test_normal_program_passes():
    result = run_program("import math, json, collections\nprint(json.dumps({'x': math.factorial(5)}))")
    assert result.passed and result.status == "passed" and result.returncode == 0
    assert result.stdout.strip() == '{"x": 120}'


def test_failing_program_reports_stderr():
    result = run_program("raise ValueError('boom')")
    assert result.status == "failed" and result.returncode == 1
    assert "ValueError: boom" in result.stderr


def test_files_inside_the_working_directory_are_allowed():
    code = (
        "import os, shutil, tempfile\n"
        "open('a.txt', 'w').write('x')\nos.rename('a.txt', 'b.txt')\nos.mkdir('d')\n"
        "open(os.path.join('d', 'c'), 'w').close()\nshutil.rmtree('d')\nos.remove('b.txt')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('y')\n"
        "os.environ['SOME_VAR'] = '1'\nprint('ok')"
    )
    result = run_program(code)
    assert result.passed, result.stderr


def test_environment_is_minimal():
    result = run_program("import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])")
    assert result.passed, result.stderr
    names, same = result.stdout.splitlines()
    assert "PYTHONPATH" not in names and same == "True"


def test_run_tests_pass_and_fail():
    program = "def add(a, b):\n    return a + b\n"
    assert run_tests(program, "assert add(1, 2) == 3").passed
    failed = run_tests(program, "assert add(1, 2) == 4")
    assert failed.status == "failed" and "AssertionError" in failed.stderr


@pytest.mark.parametrize("early_exit", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()"])
def test_run_tests_refuses_programs_that_exit_before_the_tests(early_exit):
    result = run_tests(f"def add(a, b):\n    return 0\n{early_exit}\n", "assert add(1, 2) == 3")
    assert_contained(result)


# --- hostile programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("guard", [True, False])
def test_infinite_loop_times_out(guard):
    result = run_program("while True:\n    pass", timeout_s=1, guard=guard)
    assert_contained(result)
    assert result.status == "timeout"


def test_cpu_limit_stops_a_busy_program_before_the_wall_clock():
    result = run_program("while True:\n    pass", timeout_s=60, cpu_s=1)
    assert_contained(result)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGXCPU  # the kernel's CPU limit, not the wall-clock kill (SIGKILL)


def test_sleeping_program_times_out():
    result = run_program("import time\ntime.sleep(60)", timeout_s=1)
    assert_contained(result)
    assert result.status == "timeout"


def test_closed_output_does_not_hide_a_running_program():
    result = run_program("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)", timeout_s=1)
    assert_contained(result)
    assert result.status == "timeout"


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])",
        "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
        "import os\nos.system('sleep 100 &')",
        "import _posixsubprocess\n_posixsubprocess.fork_exec([], [], True, (), None, None, -1, -1, -1, -1, -1, -1)",
    ],
    ids=["fork", "popen", "multiprocessing", "system", "fork_exec"],
)
def test_fork_bomb_is_refused(code):
    result = run_program(code, timeout_s=3)
    assert_contained(result)


def test_fork_bomb_is_capped_by_the_kernel():
    if isolation().process_limit == "none":
        pytest.skip(f"no process cap on this machine: {isolation()}")
    result = run_program("import os\nwhile True:\n    os.fork()", timeout_s=1, cpu_s=1, guard=False)
    assert_contained(result)
    assert _sandboxed_processes() == [], "fork bomb processes survived the run"


def test_process_cap_stops_forking():
    if isolation().process_limit == "none":
        pytest.skip(f"no process cap on this machine: {isolation()}")
    code = (
        "import os, time\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    print(n)\n"
    )
    result = run_program(code, timeout_s=5, guard=False)
    assert result.passed, result
    assert 0 < int(result.stdout) <= sandbox.MAX_PROCESSES
    assert _sandboxed_processes() == [], "sleeping children survived the run"


@pytest.mark.parametrize("guard", [True, False])
def test_memory_hog_is_stopped(guard):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))"
    result = run_program(code, timeout_s=5, memory_mb=256, guard=guard)
    assert_contained(result)
    assert result.status == "memory", result


def test_one_huge_allocation_is_refused():
    result = run_program("x = bytearray(8 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert_contained(result)
    assert result.status == "memory" and "allocated" not in result.stdout


@pytest.mark.parametrize(
    "template",
    [
        "open({new!r}, 'w').write('x')",
        "open({keep!r}, 'a').write('more')",
        "open({keep!r}, 'r+').write('over')",
        "import os\nos.close(os.open({new!r}, os.O_WRONLY | os.O_CREAT))",
        "import os\nfd = os.open({root!r}, os.O_RDONLY)\nos.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
        "import os\nos.symlink({keep!r}, 'link')\nopen('link', 'w').write('x')",
        "import os\nos.mkdir({newdir!r})",
        "import os\nos.chmod({keep!r}, 0o777)",
        "import os\nos.truncate({keep!r}, 0)",
        "import shutil\nshutil.copy('main.py', {new!r})",
        "import pathlib\npathlib.Path({new!r}).write_text('x')",
        "import os\nos.chdir({root!r})\nopen('new.txt', 'w')",
    ],
)
def test_writing_outside_the_working_directory_is_refused(outside, template):
    paths = {
        "root": str(outside),
        "keep": str(outside / "keep.txt"),
        "new": str(outside / "new.txt"),
        "newdir": str(outside / "newdir"),
    }
    result = run_program(template.format(**paths), timeout_s=3)
    assert_contained(result)
    # refused by the guard, or the path does not exist at all inside the jail
    assert "not allowed" in result.stderr or "No such file or directory" in result.stderr


@pytest.mark.parametrize(
    "template",
    [
        "import os\nos.remove({keep!r})",
        "import os\nos.unlink({keep!r})",
        "import shutil\nshutil.rmtree({root!r})",
        "import os\nos.rmdir({sub!r})",
        "import os\nos.rename({keep!r}, 'stolen.txt')",
        "import os\nos.replace({keep!r}, {root!r} + '/renamed.txt')",
        "import shutil\nshutil.move({keep!r}, 'moved.txt')",
        "import os\nfd = os.open({root!r}, os.O_RDONLY)\nos.remove('keep.txt', dir_fd=fd)",
        "import pathlib\npathlib.Path({keep!r}).unlink()",
    ],
)
def test_deleting_files_outside_is_refused(outside, template):
    paths = {"root": str(outside), "keep": str(outside / "keep.txt"), "sub": str(outside / "sub")}
    result = run_program(template.format(**paths), timeout_s=3)
    assert_contained(result)
    assert (outside / "keep.txt").read_text() == "precious\n"


@pytest.fixture
def listener():
    """A listening TCP socket on 127.0.0.1 that no sandboxed program must reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody connected
    server.close()


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=_needs("network_namespace"))])
def test_socket_cannot_connect(listener, guard):
    port = listener.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    result = run_program(code, timeout_s=3, guard=guard)
    assert_contained(result)
    assert "connected" not in result.stdout


def test_asyncio_still_works():
    result = run_program("import asyncio\nasync def f():\n    return 3\nprint(asyncio.run(f()))")
    assert result.passed and result.stdout.strip() == "3", result.stderr


def test_unix_sockets_cannot_connect(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(1)
    code = (
        f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(tmp_path / 's.sock')!r})\nprint('connected')"
    )
    result = run_program(code, timeout_s=3)
    server.close()
    assert_contained(result)
    assert "connected" not in result.stdout


def test_dns_and_urllib_are_refused():
    code = "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"
    assert_contained(run_program(code, timeout_s=3))


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=_needs("pid_namespace"))])
def test_killing_the_parent_fails(guard):
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)"
    result = run_program(code, timeout_s=2, guard=guard)
    assert_contained(result)  # and this test process is still alive to check it


def test_signalling_everything_is_refused():
    # signal 0 only checks permission, so this stays harmless even if the refusal were missing
    code = "import os\nos.kill(-1, 0)\nprint('allowed')"
    result = run_program(code, timeout_s=2)
    assert_contained(result)
    assert "allowed" not in result.stdout


@_needs("pid_namespace")
def test_killing_everything_stays_inside_the_pid_namespace():
    code = "import os, signal\nassert os.getpid() <= 2\nos.kill(-1, signal.SIGKILL)"  # bwrap's init is pid 1
    result = run_program(code, timeout_s=1, guard=False)
    assert_contained(result)
    assert "ProcessLookupError" in result.stderr  # there was nothing else to hit


@pytest.mark.parametrize("guard", [True, False])
def test_raising_resource_limits_is_refused(guard):
    if not guard and os.geteuid() == 0 and not isolation().no_capabilities:
        pytest.skip("root child keeps CAP_SYS_RESOURCE here")
    code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"
    assert_contained(run_program(code, timeout_s=3, guard=guard))


def test_ctypes_is_refused():
    code = "import ctypes\nctypes.CDLL(None).kill(ctypes.CDLL(None).getppid(), 9)"
    assert_contained(run_program(code, timeout_s=3))


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_truncated(stream):
    code = f"import sys\nchunk = 'x' * 1_000_000\nfor _ in range(200):\n    sys.{stream}.write(chunk)"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program(code, timeout_s=10, max_output_bytes=100_000)
    assert_contained(result)
    assert result.status == "killed" and result.output_truncated
    assert len(getattr(result, stream)) <= 100_000
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 50_000, f"evaluator memory grew by {grown_kib} KiB"


def test_output_below_the_limit_is_kept_whole():
    result = run_program("print('a' * 1000)\nimport sys\nprint('b' * 10, file=sys.stderr)", max_output_bytes=5000)
    assert result.passed and not result.output_truncated
    assert result.stdout == "a" * 1000 + "\n" and result.stderr == "b" * 10 + "\n"


def test_sandbox_error_is_reported(monkeypatch):
    def cannot_start(*args, **kwargs):
        raise OSError("no processes left")

    monkeypatch.setattr(sandbox.subprocess, "Popen", cannot_start)
    result = run_program(NORMAL_PROGRAM)
    assert result.status == "error" and not result.passed and result.returncode is None
