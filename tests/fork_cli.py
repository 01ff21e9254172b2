"""``fewstep`` commands as forked children of one process that has already imported torch and fewstep.

Starting ``python -m fewstep.cli`` costs seconds of imports on this machine, most of a small run: a
SIGKILL at a random moment of such a run mostly hits the imports. A :class:`ForkServer` imports once,
then forks a child per command; each child is a separate process (its own pid, killed by SIGKILL like
a user's kill, its stdout and stderr captured) that runs ``fewstep.cli.main()`` exactly as the
``fewstep`` entry point does, optionally with the n-th call of some ``module.attr`` replaced by a kill
part way through a save (:data:`DYING`).

Protocol: one JSON object a line on the server's stdin, one answer a line on its stdout.
``{"op": "run", "argv": [...], "out": path, "err": path, "patch": {...} | null}`` -> ``{"pid": n}``;
``{"op": "wait", "pid": n, "timeout": s | null}`` -> ``{"status": code | null}`` (null: still running
after ``timeout`` seconds; ``-signal`` when killed, as ``subprocess`` reports it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# The n-th call of module.attr SIGKILLs the process part way: ``how`` is "before" (nothing of that save
# written) or "half" (half of the bytes of a file written). Run in the forked child before main().
DYING = """
import io, os, signal
from pathlib import Path
import importlib
module = importlib.import_module({module!r})
real = getattr(module, {attr!r})
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] != {nth}:
        return real(*args, **kwargs)
    if {how!r} == "half" and {attr!r} == "save":  # torch.save(obj, path)
        buf = io.BytesIO()
        real(args[0], buf)
        Path(args[1]).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif {how!r} == "half" and {attr!r} == "atomic_write_bytes":  # atomic_write_bytes(path, data)
        tmp = Path(args[0]).with_name("." + Path(args[0]).name + "." + str(os.getpid()) + ".tmp")
        tmp.write_bytes(args[1][: len(args[1]) // 2])
    elif {how!r} == "half":  # save a model directory: its first file only
        Path(args[2]).mkdir(parents=True, exist_ok=True)
        (Path(args[2]) / "config.json").write_text("{{")
    die()

setattr(module, {attr!r}, dying)
"""

SERVER = r"""
import atexit, json, os, sys, threading, time, traceback

import torch  # noqa: F401  (the imports every command pays for, done once)
import fewstep.cli
import fewstep.commands, fewstep.files, fewstep.evaluation.runner, fewstep.evaluation.bench  # noqa: F401
import fewstep.training.lab, fewstep.training.loop, fewstep.training.rollouts  # noqa: F401
import fewstep.engine, fewstep.models.loading, safetensors.torch, transformers  # noqa: F401
import torch._dynamo, torch.optim  # noqa: F401  (a first optimizer step imports these: seconds)

requests, answers = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)


def child(req):
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(path, flags), fd)
    sys.argv = ["fewstep", *req["argv"]]
    code = 1
    try:
        if req["patch"]:
            exec(req["patch"], {})
        code = fewstep.cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def status(pid, timeout):
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


for line in requests:
    req = json.loads(line)
    if req["op"] == "run":
        assert threading.active_count() == 1, "a thread in the server would not survive the fork"
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req)
        answers.write(json.dumps({"pid": pid}) + "\n")
    else:
        answers.write(json.dumps({"status": status(req["pid"], req["timeout"])}) + "\n")
"""


class ForkServer:
    """One server process (started with ``env``); :meth:`start` a command, :meth:`wait` for it."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.tmp = tempfile.TemporaryDirectory(prefix="fork-cli-")
        self.outputs: dict[int, tuple[Path, Path]] = {}
        self.count = 0

    def _ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        line = self.proc.stdout.readline()
        assert line, f"the fork server ended (status {self.proc.poll()})"
        return json.loads(line)

    def start(self, argv: list[str], patch: str | None = None) -> int:
        """Fork a child running ``fewstep *argv`` (after ``patch``, Python source, when given); its pid."""
        self.count += 1
        out, err = Path(self.tmp.name) / f"{self.count}.out", Path(self.tmp.name) / f"{self.count}.err"
        pid = self._ask({"op": "run", "argv": list(argv), "out": str(out), "err": str(err), "patch": patch})["pid"]
        self.outputs[pid] = (out, err)
        return pid

    def wait(self, pid: int, timeout: float | None = None) -> int | None:
        """The child's exit status (``-signal`` when killed), or None if it still runs after ``timeout``."""
        return self._ask({"op": "wait", "pid": pid, "timeout": timeout})["status"]

    def run(self, argv: list[str], patch: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a command to its end, like ``subprocess.run(..., capture_output=True, text=True)``."""
        pid = self.start(argv, patch)
        code = self.wait(pid, timeout)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            self.wait(pid)
            raise subprocess.TimeoutExpired(argv, timeout)
        out, err = self.outputs.pop(pid)
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)
        self.tmp.cleanup()


def dying_patch(module: str, attr: str, nth: int, how: str) -> str:
    return DYING.format(module=module, attr=attr, nth=nth, how=how)
