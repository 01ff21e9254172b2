"""Hostile programs against the sandbox: each must be contained, reported as not passed, and leave the
evaluator, the files outside its working directory and later runs untouched.

Tests with ``guard=False`` leave out the in-process prelude to check the kernel-level limits alone; they
skip where this machine does not provide the namespace or process cap they rely on.
"""

from __future__ import annotations

import glob
import hashlib
import os
import resource
import signal
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from fewstep.sandbox import jail as sandbox
from fewstep.sandbox.jail import SandboxResult, isolation, run_program, run_tests

NORMAL_PROGRAM = "print(sum(range(10)))"


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under root, with its mode and a hash of its content."""
    state = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (path.stat().st_mode, digest)
    return state


def _leftovers() -> set[str]:
    """Sandbox working directories and this process's cgroups that currently exist (other processes may
    run sandboxes at the same time)."""
    dirs = set(glob.glob(os.path.join(tempfile.gettempdir(), "fewstep-sandbox-*")))
    mine = f"fewstep-sandbox-{os.getpid()}-*"
    cgroups = set(glob.glob(f"/sys/fs/cgroup/*/{mine}")) | set(glob.glob(f"/sys/fs/cgroup/{mine}"))
    return dirs | cgroups


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


def _assert_contained(result: SandboxResult) -> None:
    """Not passed, and ended by the sandbox's own verdict (structural: no wall-clock bound, which a
    loaded machine would break)."""
    assert not result.passed, result
    assert result.status in ("failed", "timeout", "memory", "killed"), result


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


@pytest.fixture(autouse=True)
def evaluator_survives():
    """After every test: nothing left behind, and a normal program still passes."""
    before = _leftovers()
    yield
    assert _leftovers() <= before, "working directories or cgroups were left behind"
    after = run_program(NORMAL_PROGRAM, timeout_s=10)
    assert after.passed and after.stdout.strip() == "45", after


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
    _assert_contained(result)


# --- hostile programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("guard", [True, False])
def test_infinite_loop_times_out(guard):
    result = run_program("while True:\n    pass", timeout_s=1, guard=guard)
    _assert_contained(result)
    assert result.status == "timeout"


def test_cpu_limit_stops_a_busy_program_before_the_wall_clock():
    result = run_program("while True:\n    pass", timeout_s=60, cpu_s=1)
    _assert_contained(result)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGXCPU  # the kernel's CPU limit, not the wall-clock kill (SIGKILL)


def test_sleeping_program_times_out():
    result = run_program("import time\ntime.sleep(60)", timeout_s=1)
    _assert_contained(result)
    assert result.status == "timeout"


def test_closed_output_does_not_hide_a_running_program():
    result = run_program("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)", timeout_s=1)
    _assert_contained(result)
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
    _assert_contained(result)


def test_fork_bomb_is_capped_by_the_kernel():
    if isolation().process_limit == "none":
        pytest.skip(f"no process cap on this machine: {isolation()}")
    result = run_program("import os\nwhile True:\n    os.fork()", timeout_s=1, cpu_s=1, guard=False)
    _assert_contained(result)
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
    _assert_contained(result)
    assert result.status == "memory", result


def test_one_huge_allocation_is_refused():
    result = run_program("x = bytearray(8 * 1024**3)\nprint('allocated')", memory_mb=256)
    _assert_contained(result)
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
    _assert_contained(result)
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
    _assert_contained(result)
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
    _assert_contained(result)
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
    _assert_contained(result)
    assert "connected" not in result.stdout


def test_dns_and_urllib_are_refused():
    code = "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"
    _assert_contained(run_program(code, timeout_s=3))


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=_needs("pid_namespace"))])
def test_killing_the_parent_fails(guard):
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)"
    result = run_program(code, timeout_s=2, guard=guard)
    _assert_contained(result)  # and this test process is still alive to check it


def test_signalling_everything_is_refused():
    # signal 0 only checks permission, so this stays harmless even if the refusal were missing
    code = "import os\nos.kill(-1, 0)\nprint('allowed')"
    result = run_program(code, timeout_s=2)
    _assert_contained(result)
    assert "allowed" not in result.stdout


@_needs("pid_namespace")
def test_killing_everything_stays_inside_the_pid_namespace():
    code = "import os, signal\nassert os.getpid() <= 2\nos.kill(-1, signal.SIGKILL)"  # bwrap's init is pid 1
    result = run_program(code, timeout_s=1, guard=False)
    _assert_contained(result)
    assert "ProcessLookupError" in result.stderr  # there was nothing else to hit


@pytest.mark.parametrize("guard", [True, False])
def test_raising_resource_limits_is_refused(guard):
    if not guard and os.geteuid() == 0 and not isolation().no_capabilities:
        pytest.skip("root child keeps CAP_SYS_RESOURCE here")
    code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"
    _assert_contained(run_program(code, timeout_s=3, guard=guard))


def test_ctypes_is_refused():
    code = "import ctypes\nctypes.CDLL(None).kill(ctypes.CDLL(None).getppid(), 9)"
    _assert_contained(run_program(code, timeout_s=3))


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_truncated(stream):
    code = f"import sys\nchunk = 'x' * 1_000_000\nfor _ in range(200):\n    sys.{stream}.write(chunk)"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program(code, timeout_s=10, max_output_bytes=100_000)
    _assert_contained(result)
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
    _assert_contained(result)
    assert "wrote" not in result.stdout


@needs_jail
def test_disk_is_bounded():
    code = ("block = b'x' * (1 << 20)\nwith open('big', 'wb') as f:\n    for _ in range(1024):\n"
            "        f.write(block)\nprint('wrote 1 GiB')")
    result = run_program(code, timeout_s=20, memory_mb=256)
    _assert_contained(result)
    assert "wrote" not in result.stdout


@needs_jail
def test_nothing_persists_between_runs():
    assert run_program("open('left.txt', 'w').write('x')").passed
    result = run_program("import os\nprint(sorted(os.listdir('.')))")
    assert result.passed and result.stdout.strip() == "['main.py']", result


# --- verdicts the program cannot forge ------------------------------------------------------------------

WRONG = "def add(a, b):\n    return 0\n"


@pytest.mark.parametrize("forgery", [
    "print(open(__file__).read())",                                        # the old marker lived in the source
    "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n"
    "        pass\nos._exit(0)",                                              # write on every descriptor, leave
    "import sys\nsys.settrace(lambda *a: None)",                             # tracing to jump over the asserts
    "import gc\nprint([o for o in gc.get_objects() if isinstance(o, str) and len(o) == 32])",
    "import sys\nf = sys._getframe(1)\nprint(f.f_locals)",                   # the harness's frame
    "import os\nprint(open('/proc/self/mem', 'rb'))",
], ids=["read-source", "write-every-fd", "settrace", "gc", "harness-frame", "proc-mem"])
def test_forged_verdicts_fail(forgery):
    result = run_tests(WRONG + forgery + "\n", "assert add(1, 2) == 3")
    _assert_contained(result)


# Forgeries that worked while the tests ran in the program's interpreter: each now runs against a
# tester in another jail, so each must end in a fail verdict (and the evaluator must carry on).
_FRAME_WALK = """
import os, sys
def add(a, b):
    f = sys._getframe()
    while f is not None:
        scope = f.f_locals
        if isinstance(scope.get("nonce"), str) and isinstance(scope.get("verdict_fd"), int):
            os.write(scope["verdict_fd"], scope["nonce"].encode())
            os._exit(0)
        f = f.f_back
    return 0
"""
_FORGED_REPLIES = """
import os, json
for value in ({"add": 3}, {"add": {"h": 0}}):
    data = json.dumps({"r": value}).encode()
    for fd in range(3, 32):
        try:
            os.write(fd, len(data).to_bytes(4, "big") + data + json.dumps({"r": 3}).encode())
        except OSError:
            pass
"""
CROSS_PROCESS_FORGERIES = {
    "frame-walk": _FRAME_WALK,
    "patch-exec": WRONG + "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "patch-assert": WRONG + "import builtins\nbuiltins.AssertionError = type('AssertionError', (BaseException,), {})\n"
                    "import sys\nsys.excepthook = lambda *a: None\n",
    "monitoring": WRONG + "import sys\nm = sys.monitoring\nm.use_tool_id(3, 'x')\n"
                  "m.register_callback(3, m.events.LINE, lambda *a: m.DISABLE)\nm.set_events(3, m.events.LINE)\n",
    "exit-0-in-call": "def add(a, b):\n    raise SystemExit(0)\n",
    "os-exit-0-in-call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "os-exit-0-at-import": WRONG + "import os\nos._exit(0)\n",
    "keyboard-interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "forged-replies": WRONG + _FORGED_REPLIES,
    "garbage-on-every-fd": WRONG + "import os\nfor fd in range(3, 64):\n    try:\n"
                           "        os.write(fd, b'\\xff' * 64)\n    except OSError:\n        pass\n",
    "close-every-fd": WRONG + "import os\nos.closerange(3, 64)\n",
    "print-markers": WRONG + "print('passed', 'fewstep-tests-finished', '0' * 32)\n",
    "always-equal": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                    "def add(a, b):\n    return Yes()\n",
    "int-subclass-equal": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                          "def add(a, b):\n    return Yes(0)\n",
    "hang-in-call": "def add(a, b):\n    while True:\n        pass\n",
}
SHADOWING_FORGERIES = {  # the program replaces a name that the tests use: (program, tests)
    "shadow-abs": (WRONG + "def abs(x):\n    return 0\n", "assert abs(add(1, 2) - 3) < 1e-9"),
    "shadow-math": (WRONG + "class M:\n    def isclose(*a, **k):\n        return True\nmath = M()\n",
                    "assert math.isclose(add(1, 2), 3)"),
    "shadow-math-module": (WRONG + "import math\nmath.isclose = lambda *a, **k: True\n",
                           "assert math.isclose(add(1, 2), 3)"),
    "shadow-module-alias": (WRONG + "import cmath as math\n", "assert math.isclose(add(1, 2), 3)"),
}


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("forgery", CROSS_PROCESS_FORGERIES.values(), ids=CROSS_PROCESS_FORGERIES.keys())
def test_verdicts_cannot_be_forged_from_the_programs_process(forgery, guard):
    """With the audit hook and without it: the verdict does not depend on it."""
    _assert_contained(run_program(forgery, timeout_s=3, tests="assert add(1, 2) == 3", guard=guard))


@pytest.mark.parametrize("program,tests", SHADOWING_FORGERIES.values(), ids=SHADOWING_FORGERIES.keys())
def test_the_program_cannot_replace_what_the_tests_use(program, tests):
    _assert_contained(run_tests(program, tests, timeout_s=3))
    assert run_tests(program.replace("return 0", "return a + b", 1), tests).passed  # the same, correct


def test_the_tests_reach_the_program_only_as_plain_data():
    program = (
        "import math\nclass Tree:\n    def __init__(self, v):\n        self.v, self.left = v, None\n"
        "def add(a, b):\n    return a + b\n"
        "def union(a, b):\n    return a | b\n"
        "def depth(n):\n    return 0 if n is None else 1 + depth(n.left)\n"
        "def pairs(n):\n    return ((i, i * i) for i in range(n))\n"
        "def count(xs):\n    import collections\n    return collections.Counter(xs)\n"
        "def fail(x):\n    raise ValueError(f'bad {x}')\n"
        "def eof():\n    raise EOFError('end')\n"
        "def bad_bytes():\n    return b'\\xff'.decode()\n"
        "def push(xs):\n    xs.append(1)\n    return xs\n"
        "def sum(a, b):\n    return a - b\n"
        "LIMIT = 10 ** 40\n"
    )
    tests = """
class Node:
    def __init__(self, left=None):
        self.left = left
assert add(1, 2) == 3 and add([1], [2]) == [1, 2] and add((1,), (2.5,)) == (1, 2.5)
assert add(0.1, 0.2) == 0.1 + 0.2 and math.isnan(add(float('nan'), 1.0)) and add(1j, 2) == 2 + 1j
assert add(b'a', b'b') == b'ab' and add(LIMIT, 1) == 10 ** 40 + 1 and add(-LIMIT, 0) == -10 ** 40
assert union({1}, {(2, 'x')}) == {1, (2, 'x')} and union(frozenset([1]), frozenset()) == frozenset([1])
assert union({(1, 2): [3]}, {None: {4: 5.5}}) == {(1, 2): [3], None: {4: 5.5}}
assert depth(Node(Node(Node()))) == 3
tree = Tree(1)  # the program's class, built and changed from the tests
tree.left = Tree(2)
tree.left.left = Tree(3)
assert depth(tree) == 3 and tree.left.v == 2
assert list(pairs(3)) == [(0, 0), (1, 1), (2, 4)]
assert count('abca') == {'a': 2, 'b': 1, 'c': 1}
try:
    fail(3)
    raise AssertionError('no exception')
except ValueError as e:
    assert str(e) == 'bad 3'
for f, expected in ((eof, EOFError), (bad_bytes, Exception)):
    try:
        f()
        raise AssertionError('no exception')
    except expected:
        pass
xs = [0]
assert push(xs) == [0, 1] and xs == [0]  # arguments are copies
assert sum(5, 3) == 2
"""
    assert run_tests(program, tests, shadowing=("sum",)).passed
    assert not run_tests(program, tests).passed  # sum stays the built-in unless allowed


def test_a_correct_program_still_passes_after_printing_anything():
    result = run_tests("def add(a, b):\n    return a + b\nprint('fewstep-tests-finished')\n", "assert add(1, 2) == 3")
    assert result.passed, result


def test_no_jail_is_one_clear_error_unless_unsafe_is_asked(monkeypatch):
    from fewstep.errors import SandboxUnavailableError
    from fewstep.sandbox import kernel

    monkeypatch.setattr(kernel, "unavailable", lambda: "no user namespaces here")
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailableError, match="no user namespaces here.*--unsafe-exec"):
        run_tests("def f():\n    return 1\n", "assert f() == 1")
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    assert run_tests("def f():\n    return 1\n", "assert f() == 1").passed
