"""Shared fixtures: tiny random models saved in Hugging Face layout and loaded like real ones."""

from __future__ import annotations

import json
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
