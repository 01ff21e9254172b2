"""Fast-dLLM v2 (Qwen2.5 layers, block-causal attention in blocks of bd_size, shifted logits) on a
random tiny config saved in the published layout, against a forward written here from the published
modelling code's equations (modeling.py's eval_mask and Qwen2 layers), independently of fewstep's
implementation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fewstep
from fewstep.tasks import arith
from model_helpers import assert_refused, random_normal, rms, rotate_half, write_model_dir

CONFIG = {
    "model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "max_position_embeddings": 256, "rope_scaling": None, "use_sliding_window": False, "sliding_window": 256,
    "max_window_layers": 2, "layer_types": ["full_attention", "full_attention"], "attention_dropout": 0.0,
    "bd_size": 8, "use_cache": True, "torch_dtype": "float32",
    "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                 "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
}


def published_weights(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    rnd = random_normal(seed)
    d, h, hk, f = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    dh = d // h

    w = {"model.embed_tokens.weight": rnd(c["vocab_size"], d, std=1.0), "model.norm.weight": 1 + rnd(d, std=0.1)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w.update({f"{p}.input_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.post_attention_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.self_attn.q_proj.weight": rnd(h * dh, d), f"{p}.self_attn.q_proj.bias": rnd(h * dh),
                  f"{p}.self_attn.k_proj.weight": rnd(hk * dh, d), f"{p}.self_attn.k_proj.bias": rnd(hk * dh),
                  f"{p}.self_attn.v_proj.weight": rnd(hk * dh, d), f"{p}.self_attn.v_proj.bias": rnd(hk * dh),
                  f"{p}.self_attn.o_proj.weight": rnd(d, h * dh),
                  f"{p}.mlp.gate_proj.weight": rnd(f, d), f"{p}.mlp.up_proj.weight": rnd(f, d),
                  f"{p}.mlp.down_proj.weight": rnd(d, f)})
    return w


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory) -> Path:
    # tied: no lm_head.weight stored
    return write_model_dir(tmp_path_factory.mktemp("fastdllm") / "tiny-fast-dllm-v2", CONFIG, published_weights)


# ---- the reference: the published equations, one sequence, no padding ----

def reference_logits(w, c, ids: list[int], block: int) -> torch.Tensor:
    """Unshifted outputs: row i is the model's output at position i (it predicts position i + 1)."""
    t, h, hk, eps = len(ids), c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    dh = c["hidden_size"] // h
    q_idx, kv_idx = torch.arange(t)[:, None], torch.arange(t)[None, :]
    additive = torch.where(q_idx // block >= kv_idx // block, 0.0, float("-inf"))  # eval_block_diff_mask
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, dh, 2).float() / dh))
    freqs = torch.arange(t).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn"
        a = rms(x, w[f"model.layers.{i}.input_layernorm.weight"], eps)
        q = (a @ w[f"{p}.q_proj.weight"].T + w[f"{p}.q_proj.bias"]).view(t, h, dh).transpose(0, 1)
        k = (a @ w[f"{p}.k_proj.weight"].T + w[f"{p}.k_proj.bias"]).view(t, hk, dh).transpose(0, 1)
        v = (a @ w[f"{p}.v_proj.weight"].T + w[f"{p}.v_proj.bias"]).view(t, hk, dh).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(h // hk, 0), v.repeat_interleave(h // hk, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh) + additive, dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(t, -1) @ w[f"{p}.o_proj.weight"].T
        m = rms(x, w[f"model.layers.{i}.post_attention_layernorm.weight"], eps)
        f = f"model.layers.{i}.mlp"
        gate = torch.nn.functional.silu(m @ w[f"{f}.gate_proj.weight"].T)
        x = x + (gate * (m @ w[f"{f}.up_proj.weight"].T)) @ w[f"{f}.down_proj.weight"].T
    return rms(x, w["model.norm.weight"], eps) @ w["model.embed_tokens.weight"].T  # tied head


def test_logits_match_the_published_equations(v2_dir):
    model = fewstep.load_model(v2_dir)
    cfg = json.loads((v2_dir / "config.json").read_text())
    w = load_file(v2_dir / "model.safetensors")
    torch.manual_seed(0)
    for length in (5, 12, 19):
        ids = torch.randint(5, cfg["vocab_size"], (length,)).tolist()
        want = reference_logits(w, cfg, ids, cfg["bd_size"])
        got = model.module(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, length, dtype=torch.long))
        assert (got.logits[0] - want).abs().max() < 1e-4
        # the adapter realigns them as the reference's decoding does: [out_0, out_0, out_1, ...]
        aligned = model.logits(torch.tensor([ids]), torch.ones(1, length, dtype=torch.long))[0]
        assert (aligned - torch.cat([want[:1], want[:-1]])).abs().max() < 1e-4
    assert not torch.allclose(reference_logits(w, cfg, ids, 4), want, atol=1e-4)  # bd_size matters
    assert set(model.module.state_dict()) == set(w)  # published names; the tied head is not stored


def test_authors_defaults_and_left_padding(v2_dir):
    model = fewstep.load_model(v2_dir)
    assert model.shifted_logits and model.module.config.attention_block_length == 8
    assert model.decode_defaults["block_length"] == 8 and model.decode_defaults["threshold"] == 0.9
    ids = torch.randint(5, 100, (1, 11))
    alone = model.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    pad = torch.zeros((1, 3), dtype=torch.long)
    padded = model.module(input_ids=torch.cat([pad, ids], 1), attention_mask=torch.cat([pad, torch.ones_like(ids)], 1))
    torch.testing.assert_close(padded.logits[:, 3:], alone)


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_block_diffusion_decode_with_cache_is_exact(v2_dir, cache):
    model = fewstep.load_model(v2_dir)
    prompts = [model.encode_prompt(p.question) for p in arith.test_set()[:6]]
    base = dict(strategy="block_threshold", threshold=0.9, gen_length=16, block_length=4)
    plain = fewstep.generate(model, prompts, fewstep.DecodeConfig(cache="none", **base))
    cached = fewstep.generate(model, prompts, fewstep.DecodeConfig(cache=cache, **base))
    assert [(r.token_ids, r.nfe) for r in cached] == [(r.token_ids, r.nfe) for r in plain]
    assert all(model.mask_id not in r.token_ids for r in plain)


@pytest.mark.parametrize("field,value", [("rope_scaling", {"type": "yarn", "factor": 2.0}),
                                         ("use_sliding_window", True), ("bd_size", -1),
                                         ("layer_types", ["sliding_attention", "full_attention"]),
                                         ("head_dim", 4)])
def test_unimplemented_config_values_are_refused(v2_dir, tmp_path, field, value):
    assert_refused(v2_dir, tmp_path, field, value)
