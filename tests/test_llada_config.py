"""The LLaDA config contract: every value the official (OLMo-derived) LLaDA code honours is either
computed exactly as it does or refused at load with one line naming the field.

Each implemented variant is checked on a random tiny model, saved in the published layout, against
a forward written here from the official code's equations (independently of fewstep's module)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import fewstep
from fewstep import ModelLoadError

BASE = {  # the published LLaDA-8B field set, scaled down
    "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 32, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "mlp_hidden_size": 48, "mlp_ratio": 4, "vocab_size": 171, "embedding_size": 171,
    "rope": True, "rope_theta": 500000.0, "rope_full_precision": True, "rms_norm_eps": 1e-5,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "bias_for_layer_norm": False,
    "activation_type": "silu", "block_type": "llama", "block_group_size": 1, "weight_tying": False,
    "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False, "scale_logits": False,
    "alibi": False, "alibi_bias_max": 8.0, "flash_attention": False, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True, "multi_query_attention": None, "attention_dropout": 0.0,
    "residual_dropout": 0.0, "embedding_dropout": 0.0, "init_device": "meta", "init_fn": "mitchell",
    "init_std": 0.02, "init_cutoff_factor": None, "precision": "amp_bf16", "use_cache": False,
    "mask_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_sequence_length": 96,
}


def _kv_heads(c: dict) -> int:
    if c.get("n_kv_heads") is None:
        return 1 if c.get("multi_query_attention") else c["n_heads"]
    return c["n_kv_heads"]


def official_state(c: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes the official model has for config ``c``."""
    d, hd = c["d_model"], c["d_model"] // c["n_heads"]
    kv, vocab = _kv_heads(c) * hd, c["embedding_size"] or c["vocab_size"]
    hidden = c["mlp_hidden_size"] if c["mlp_hidden_size"] is not None else c["mlp_ratio"] * d
    bias = c["include_bias"]
    norm_bias = bias if c["bias_for_layer_norm"] is None else c["bias_for_layer_norm"]
    state: dict[str, torch.Tensor] = {}

    def rnd(*shape, std=0.3):
        return torch.randn(*shape, generator=gen) * std

    def linear(name, out_f, in_f, with_bias):
        state[name + ".weight"] = rnd(out_f, in_f)
        if with_bias:
            state[name + ".bias"] = rnd(out_f, std=0.1)

    def norm(name):
        if c["layer_norm_with_affine"]:
            state[name + ".weight"] = 1 + rnd(d, std=0.1)
            if norm_bias:
                state[name + ".bias"] = rnd(d, std=0.1)

    state["model.transformer.wte.weight"] = rnd(vocab, d)
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        norm(p + "attn_norm")
        norm(p + "ff_norm")
        linear(p + "q_proj", d, d, bias or c["include_qkv_bias"])
        linear(p + "k_proj", kv, d, bias or c["include_qkv_bias"])
        linear(p + "v_proj", kv, d, bias or c["include_qkv_bias"])
        linear(p + "attn_out", d, d, bias)
        linear(p + "ff_proj", hidden, d, bias)
        linear(p + "up_proj", hidden, d, bias)
        linear(p + "ff_out", d, hidden, bias)
    norm("model.transformer.ln_f")
    if not c["weight_tying"]:
        linear("model.transformer.ff_out", vocab, d, bias)
    return state


def official_forward(c: dict, s: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """The official LLaDA forward (llama block, rotary, no padding) in float64, from its equations."""
    s = {k: v.double() for k, v in s.items()}
    d, h = c["d_model"], c["n_heads"]
    hd, kvh = d // h, _kv_heads(c)
    b, t = ids.shape

    def lin(x, name):
        return x @ s[name + ".weight"].T + (s[name + ".bias"] if name + ".bias" in s else 0)

    def norm(x, name):
        w, bias = s.get(name + ".weight"), s.get(name + ".bias", 0)
        if c["layer_norm_type"] in ("default", "low_precision"):  # low_precision: the same outside autocast
            y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
            return y if w is None else y * w + bias
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + c["rms_norm_eps"])
        if w is None:
            return y
        return (y * (1 + w) if c["layer_norm_type"] == "gemma_rms" else w * y) + bias

    act = {"silu": lambda z: z / (1 + torch.exp(-z)), "relu": lambda z: torch.where(z > 0, z, 0 * z),
           "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))}[c["activation_type"]]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)

    def rope(z):  # [B, heads, T, hd]; halves paired
        z1, z2 = z[..., : hd // 2], z[..., hd // 2:]
        return z * ang.cos() + torch.cat([-z2, z1], -1) * ang.sin()

    x = s["model.transformer.wte.weight"][ids]
    if c["input_emb_norm"]:
        x = x * math.sqrt(d)
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        n = norm(x, p + "attn_norm")
        q = rope(lin(n, p + "q_proj").view(b, t, h, hd).transpose(1, 2))
        k = rope(lin(n, p + "k_proj").view(b, t, kvh, hd).transpose(1, 2)).repeat_interleave(h // kvh, 1)
        v = lin(n, p + "v_proj").view(b, t, kvh, hd).transpose(1, 2).repeat_interleave(h // kvh, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + lin(att.transpose(1, 2).reshape(b, t, d), p + "attn_out")
        m = norm(x, p + "ff_norm")
        x = x + lin(act(lin(m, p + "ff_proj")) * lin(m, p + "up_proj"), p + "ff_out")
    x = norm(x, "model.transformer.ln_f")
    logits = x @ s["model.transformer.wte.weight"].T if c["weight_tying"] else lin(x, "model.transformer.ff_out")
    return logits / math.sqrt(d) if c["scale_logits"] else logits


def write_llada(path: Path, tokenizer_dir: Path, c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    path.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, path / f)
    (path / "config.json").write_text(json.dumps(c))
    state = official_state({**c, **{k: v for k, v in BASE.items() if k not in c}}, torch.Generator().manual_seed(seed))
    save_file(state, path / "model.safetensors")
    return state


VARIANTS = {
    "published": {},
    "layer_norm_default": {"layer_norm_type": "default"},
    "layer_norm_low_precision": {"layer_norm_type": "low_precision"},
    "gemma_rms": {"layer_norm_type": "gemma_rms"},
    "norm_bias": {"bias_for_layer_norm": True},
    "norm_without_affine": {"layer_norm_with_affine": False},
    "default_norm_without_affine": {"layer_norm_type": "default", "layer_norm_with_affine": False},
    "gelu": {"activation_type": "gelu"},
    "relu": {"activation_type": "relu"},
    "input_emb_norm": {"input_emb_norm": True},
    "scale_logits": {"scale_logits": True},
    "mlp_from_ratio": {"mlp_hidden_size": None, "mlp_ratio": 3},
    "include_bias": {"include_bias": True, "bias_for_layer_norm": None},
    "qkv_bias_tied": {"include_qkv_bias": True, "weight_tying": True},
    "multi_query": {"n_kv_heads": None, "multi_query_attention": True},
    "gqa": {"n_kv_heads": 2},
    "embedding_size_null": {"embedding_size": None},
    "flash_attention_and_dropouts": {"flash_attention": True, "attention_dropout": 0.1, "residual_dropout": 0.1},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_the_official_equations(tmp_path, random_dlm_dir, name):
    c = {**BASE, **VARIANTS[name]}
    state = write_llada(tmp_path / name, random_dlm_dir, c)
    model = fewstep.load_model(tmp_path / name)
    ids = torch.randint(3, 171, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.module(input_ids=ids).logits.double()
    ref = official_forward({**BASE, **VARIANTS[name]}, state, ids)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_variants_change_the_logits(tmp_path, random_dlm_dir):
    """The reference is sensitive to each switch (a test that could not fail would prove nothing)."""
    state = official_state(BASE, torch.Generator().manual_seed(0))
    ids = torch.randint(3, 171, (1, 9), generator=torch.Generator().manual_seed(1))
    base = official_forward(BASE, state, ids)
    for change in ({"layer_norm_type": "gemma_rms"}, {"activation_type": "gelu"}, {"input_emb_norm": True},
                   {"scale_logits": True}, {"layer_norm_type": "default"}):
        assert not torch.allclose(base, official_forward({**BASE, **change}, state, ids), atol=1e-3)


def test_absent_fields_take_the_official_defaults(tmp_path, random_dlm_dir):
    """A config.json that leaves out ``weight_tying`` is tied, as in the official code (its default)."""
    c = {k: v for k, v in BASE.items() if k != "weight_tying"}
    write_llada(tmp_path / "m", random_dlm_dir, {**c, "weight_tying": True})
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    model = fewstep.load_model(tmp_path / "m")
    assert model.module.config.weight_tying and "model.transformer.ff_out.weight" not in model.module.state_dict()


REFUSED = {
    "block_type": "sequential", "rope": False, "alibi": True, "block_group_size": 2, "rope_full_precision": False,
    "attention_layer_norm": True, "clip_qkv": 8.0, "layer_norm_type": "amd_compatible", "activation_type": "swiglu",
    "include_qkv_bias": None, "scale_logits": "yes", "n_heads": 5, "n_kv_heads": 3,
}


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_unimplemented_values_are_refused_naming_the_field(tmp_path, random_dlm_dir, field):
    write_llada(tmp_path / "m", random_dlm_dir, BASE)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**BASE, field: REFUSED[field]}))
    with pytest.raises(ModelLoadError) as err:
        fewstep.load_model(tmp_path / "m")
    line = str(err.value)
    assert "\n" not in line and f"{field}={REFUSED[field]!r}" in line and "not implemented" in line


def test_contradicting_multi_query_is_refused(tmp_path, random_dlm_dir):
    write_llada(tmp_path / "m", random_dlm_dir, BASE)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**BASE, "multi_query_attention": True}))
    with pytest.raises(ModelLoadError, match="multi_query_attention=True.*n_kv_heads=4"):
        fewstep.load_model(tmp_path / "m")


def test_the_bundled_lab_config_keeps_loading(random_dlm_dir):
    cfg = json.loads((random_dlm_dir / "config.json").read_text())
    assert cfg["layer_norm_type"] == "rms" and cfg["activation_type"] == "silu" and cfg["block_type"] == "llama"
    assert fewstep.load_model(random_dlm_dir).module.config.mlp_hidden_size == cfg["mlp_hidden_size"]
