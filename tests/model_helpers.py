"""What the tests of the native model families share: a tiny model directory in the published layout
(the arith word-level tokenizer, config.json, random weights), the refusal of an unimplemented
config.json value, and the pieces of the reference forwards written from the published equations
(independently of fewstep's implementation)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import fewstep
from fewstep.errors import ModelLoadError
from fewstep.tasks import arith
from fewstep.training import tokenizers


def random_normal(seed: int) -> Callable[..., torch.Tensor]:
    """``rnd(*shape, std=0.3)``: normal values from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    return rnd


def write_model_dir(path: Path, config: dict, weights: Callable[[dict], dict[str, torch.Tensor]],
                    mask_token: bool = False) -> Path:
    """A model directory at ``path`` (created): the arith tokenizer, ``config`` with its vocabulary
    size and special token ids (the mask token's too with ``mask_token``), ``weights(config)``."""
    path.mkdir()
    tok = tokenizers.word_level(arith.vocabulary())
    cfg = {**config, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if mask_token:
        cfg["mask_token_id"] = tok.mask_token_id
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(weights(cfg), path / "model.safetensors")
    tok.save_pretrained(path)
    return path


def assert_refused(model_dir: Path, tmp_path: Path, field: str, value) -> None:
    """A copy of ``model_dir`` with ``field: value`` in its config.json fails to load, naming the field."""
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=field):
        fewstep.load_model(bad)


# ---- pieces of the reference forwards ----

def rms(x, w, eps):
    """RMSNorm as transformers' Qwen2 computes it: float32 statistics, cast back, then the weight."""
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1)


def swiglu(x, w, p):
    """The gated MLP with weights ``{p}.{gate,up,down}_proj.weight`` of ``w``."""
    return (torch.nn.functional.silu(x @ w[f"{p}.gate_proj.weight"].T) * (x @ w[f"{p}.up_proj.weight"].T)) \
        @ w[f"{p}.down_proj.weight"].T
