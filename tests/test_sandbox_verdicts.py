"""Verdicts a sandboxed program cannot forge: programs that try to pass tests they fail (by writing a
marker, walking frames, patching builtins, shadowing what the tests use) are reported as not passed."""

from __future__ import annotations

import pytest

from fewstep.sandbox import jail as sandbox
from fewstep.sandbox.jail import run_program, run_tests
from sandbox_helpers import assert_contained

pytestmark = pytest.mark.usefixtures("evaluator_survives")  # (conftest) nothing left behind, the evaluator still works


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
    assert_contained(result)


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
    assert_contained(run_program(forgery, timeout_s=3, tests="assert add(1, 2) == 3", guard=guard))


@pytest.mark.parametrize("program,tests", SHADOWING_FORGERIES.values(), ids=SHADOWING_FORGERIES.keys())
def test_the_program_cannot_replace_what_the_tests_use(program, tests):
    assert_contained(run_tests(program, tests, timeout_s=3))
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
