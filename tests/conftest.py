"""Shared fixtures: tiny random models saved in Hugging Face layout and loaded like real ones."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from fewstep.training import lab

# Tiny models gain nothing from intra-op threads, and spinning threads fight any other job on the machine.
torch.set_num_threads(1)

ASSETS = Path(__file__).resolve().parent.parent / "src" / "fewstep" / "assets"


def make_random_dlm(path: Path, d_model: int = 32, layers: int = 2, std: float = 0.3, seed: int = 0,
                    max_len: int = 96) -> Path:
    """A random LLaDA-architecture model with the lab tokenizer; large init so logits are peaked."""
    torch.manual_seed(seed)
    model, tok = lab.new_dlm(d_model, layers, 4, 2 * d_model, max_len=max_len)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    lab.save_dlm(model, tok, path)
    return path


@pytest.fixture(scope="session")
def random_dlm_dir(tmp_path_factory) -> Path:
    return make_random_dlm(tmp_path_factory.mktemp("models") / "random-dlm")


@pytest.fixture(scope="session")
def random_ar_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, tok = lab.new_ar(32, 2, 4, 64, max_len=256)
    path = tmp_path_factory.mktemp("models") / "random-ar"
    lab.save_ar(model, tok, path)
    (path / "fewstep.json").write_text(json.dumps({"decode_defaults": {"gen_length": 16}}))
    return path


def bundled(name: str) -> Path:
    path = ASSETS / name
    if not (path / "config.json").is_file():
        pytest.skip(f"bundled model {name} is not in this checkout (train it with `make lab-models`)")
    return path


# --- fixtures: the helpers above, and the bundled models each loaded once per session -------------------
# Loaded models are shared by every test of the session: use them to decode, never to change them.


@pytest.fixture(scope="session", name="bundled")
def bundled_fixture():
    """``bundled(name)``: a bundled model's directory (the test is skipped when it is not installed)."""
    return bundled


@pytest.fixture(scope="session", name="make_random_dlm")
def make_random_dlm_fixture():
    """``make_random_dlm(path, ...)``: writes a random LLaDA-architecture model directory at ``path``."""
    return make_random_dlm


def _load_bundled(name: str):
    import fewstep

    return fewstep.load_model(bundled(name))


@pytest.fixture(scope="session")
def tiny_dlm():
    """The bundled tiny-dlm, loaded once per session (skips when the checkout has not got it)."""
    return _load_bundled("tiny-dlm")


@pytest.fixture(scope="session")
def tiny_ar():
    return _load_bundled("tiny-ar")


@pytest.fixture(scope="session")
def tiny_dlm_cd():
    return _load_bundled("tiny-dlm-cd")


# --- order and isolation under xdist (``-n``; ``--dist loadfile --no-loadscope-reorder``, pyproject) -----


def pytest_collection_modifyitems(items) -> None:
    """Modules with tests marked ``slow`` first (otherwise the collection order is kept): xdist hands out
    whole modules in this order (their module fixtures set up once), so the long ones start early and
    the run ends on short ones instead of one worker finishing a long module alone."""
    heavy = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in heavy)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker its own temporary directory: a test that checks what it left behind in the temporary
    # directory (the sandbox tests) does not see what a test on the other worker has there meanwhile.
    _worker_tmp = tempfile.mkdtemp(prefix=f"fewstep-tests-{os.environ['PYTEST_XDIST_WORKER']}-")
    tempfile.tempdir = os.environ["TMPDIR"] = _worker_tmp
    atexit.register(shutil.rmtree, _worker_tmp, ignore_errors=True)


# Helper modules imported by the serve and sandbox tests: their asserts report like the tests' own.
pytest.register_assert_rewrite("serve_helpers", "sandbox_helpers")


# --- fixtures of the serve tests (tests/test_serve*.py; helpers in tests/serve_helpers.py) ---------------


@pytest.fixture(scope="module")
def model(tiny_dlm):
    """The bundled tiny-dlm (``tiny_dlm``, loaded once per session), as the serve tests name it."""
    return tiny_dlm


@pytest.fixture(scope="module")
def live(model):
    """A real uvicorn server on a free loopback port, in a thread of this process: its address and app."""
    import threading

    import uvicorn

    from fewstep.serve.app import create_app
    from fewstep.serve.requests import ServerConfig
    from serve_helpers import LIMITS, Uvicorn, free_port

    app = create_app(model, ServerConfig(limits=LIMITS), max_batch_size=16, max_wait_ms=100)
    server = Uvicorn(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(120) and server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(30)


# --- fixtures of the sandbox tests (tests/test_sandbox*.py; helpers in tests/sandbox_helpers.py) ---------


@pytest.fixture
def evaluator_survives():
    """After a sandbox test: nothing left behind, and a normal program still passes (each sandbox test
    module uses it for all its tests, through ``pytestmark``)."""
    from fewstep.sandbox.jail import run_program
    from sandbox_helpers import NORMAL_PROGRAM, leftovers

    before = leftovers()
    yield
    assert leftovers() <= before, "working directories or cgroups were left behind"
    after = run_program(NORMAL_PROGRAM, timeout_s=10)
    assert after.passed and after.stdout.strip() == "45", after
