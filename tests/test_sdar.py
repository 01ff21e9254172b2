"""SDAR (Qwen3 layers, block-causal attention) on a random tiny config saved in the published layout,
against a forward written here from the published modelling code's equations (modeling_sdar.py and
the block mask its generate.py builds), independently of fewstep's implementation."""

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
    "model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_bias": False,
    "tie_word_embeddings": False, "max_position_embeddings": 256, "rope_scaling": None, "use_sliding_window": False,
    "sliding_window": None, "max_window_layers": 2, "attention_dropout": 0.0, "block_size": 4,
    "fuse_cross_entropy": True, "use_cache": True, "torch_dtype": "float32",
    "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
                 "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
}


def published_weights(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    rnd = random_normal(seed)
    d, h, hk, dh, f = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], \
        c["intermediate_size"]

    w = {"model.embed_tokens.weight": rnd(c["vocab_size"], d, std=1.0), "model.norm.weight": 1 + rnd(d, std=0.1),
         "lm_head.weight": rnd(c["vocab_size"], d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w.update({f"{p}.input_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.post_attention_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.self_attn.q_proj.weight": rnd(h * dh, d), f"{p}.self_attn.k_proj.weight": rnd(hk * dh, d),
                  f"{p}.self_attn.v_proj.weight": rnd(hk * dh, d), f"{p}.self_attn.o_proj.weight": rnd(d, h * dh),
                  f"{p}.self_attn.q_norm.weight": 1 + rnd(dh, std=0.1),
                  f"{p}.self_attn.k_norm.weight": 1 + rnd(dh, std=0.1),
                  f"{p}.mlp.gate_proj.weight": rnd(f, d), f"{p}.mlp.up_proj.weight": rnd(f, d),
                  f"{p}.mlp.down_proj.weight": rnd(d, f)})
    return w


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("sdar") / "tiny-sdar", CONFIG, published_weights, mask_token=True)


# ---- the reference: the published equations, one sequence, no padding ----

def reference_logits(w, c, ids: list[int], block: int) -> torch.Tensor:
    t, h, hk, dh, eps = len(ids), c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
    n = (t + block - 1) // block
    allowed = torch.tril(torch.ones(n, n)).repeat_interleave(block, 0).repeat_interleave(block, 1)[:t, :t]
    additive = torch.where(allowed.bool(), 0.0, float("-inf"))
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, dh, 2).float() / dh))
    freqs = torch.arange(t).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        a = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        q = rms((a @ w[f"{p}.self_attn.q_proj.weight"].T).view(t, h, dh), w[f"{p}.self_attn.q_norm.weight"], eps)
        k = rms((a @ w[f"{p}.self_attn.k_proj.weight"].T).view(t, hk, dh), w[f"{p}.self_attn.k_norm.weight"], eps)
        v = (a @ w[f"{p}.self_attn.v_proj.weight"].T).view(t, hk, dh)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(h // hk, 0), v.repeat_interleave(h // hk, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh) + additive, dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(t, h * dh) @ w[f"{p}.self_attn.o_proj.weight"].T
        m = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(m @ w[f"{p}.mlp.gate_proj.weight"].T)
        x = x + (gate * (m @ w[f"{p}.mlp.up_proj.weight"].T)) @ w[f"{p}.mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def test_logits_match_the_published_equations(sdar_dir):
    model = fewstep.load_model(sdar_dir)
    cfg = json.loads((sdar_dir / "config.json").read_text())
    w = load_file(sdar_dir / "model.safetensors")
    torch.manual_seed(0)
    for length in (3, 9, 14):
        ids = torch.randint(5, cfg["vocab_size"], (length,)).tolist()
        want = reference_logits(w, cfg, ids, cfg["block_size"])
        got = model.module(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, length, dtype=torch.long))
        assert (got.logits[0] - want).abs().max() < 1e-4
    assert not torch.allclose(reference_logits(w, cfg, ids, 8), want, atol=1e-4)  # the block size matters
    assert set(model.module.state_dict()) == set(w)  # the published parameter names, nothing else


def test_left_padding_changes_nothing(sdar_dir):
    model = fewstep.load_model(sdar_dir)
    ids = torch.randint(5, 100, (1, 11))
    alone = model.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    pad = torch.zeros((1, 3), dtype=torch.long)
    padded = model.module(input_ids=torch.cat([pad, ids], 1), attention_mask=torch.cat([pad, torch.ones_like(ids)], 1))
    torch.testing.assert_close(padded.logits[:, 3:], alone)


def test_registry_and_authors_defaults(sdar_dir):
    from fewstep.catalog import architecture_rows

    assert {"sdar": "SDAR"}.items() <= {r["model_type"]: r["architecture"] for r in architecture_rows()}.items()
    model = fewstep.load_model(sdar_dir)
    assert model.decode_defaults["block_length"] == 4 and model.decode_defaults["threshold"] == 0.85
    assert model.module.config.attention_block_length == 4 and not model.shifted_logits


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_block_diffusion_decode_with_cache_is_exact(sdar_dir, cache):
    model = fewstep.load_model(sdar_dir)
    prompts = [model.encode_prompt(p.question) for p in arith.test_set()[:6]]
    base = dict(strategy="block_threshold", threshold=0.85, gen_length=12, block_length=4)
    plain = fewstep.generate(model, prompts, fewstep.DecodeConfig(cache="none", **base))
    cached = fewstep.generate(model, prompts, fewstep.DecodeConfig(cache=cache, **base))
    assert [(r.token_ids, r.nfe) for r in cached] == [(r.token_ids, r.nfe) for r in plain]
    assert all(model.mask_id not in r.token_ids for r in plain)


@pytest.mark.parametrize("field,value", [("rope_scaling", {"type": "yarn", "factor": 2.0}),
                                         ("use_sliding_window", True), ("hidden_act", "swish"),
                                         ("block_size", 0)])
def test_unimplemented_config_values_are_refused(sdar_dir, tmp_path, field, value):
    assert_refused(sdar_dir, tmp_path, field, value)


def test_auto_classes_open_it_with_fewsteps_logits(sdar_dir):
    import transformers

    fewstep.register_auto_classes()
    auto = transformers.AutoModelForMaskedLM.from_pretrained(sdar_dir, trust_remote_code=False)
    assert type(auto).__module__ == "fewstep.models.hf_block"
    ids = torch.randint(5, 100, (1, 10))
    want = fewstep.load_model(sdar_dir).module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(auto(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, want)
