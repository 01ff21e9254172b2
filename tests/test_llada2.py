"""LLaDA 2.x (MoE, block-causal) on a random tiny config saved in the published layout, against a
forward written here from the official modelling code's equations (modeling_llada2_moe.py and the
block-diagonal causal mask its generate() builds), independently of fewstep's implementation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.tasks import arith
from model_helpers import assert_refused, random_normal, rms, rotate_half, swiglu, write_model_dir

CONFIG = {
    "model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "hidden_size": 32,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 48, "moe_intermediate_size": 16, "num_experts": 8, "num_shared_experts": 1,
    "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1, "rope_theta": 600000, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-6,
    "use_qkv_bias": True, "use_bias": False, "tie_word_embeddings": False, "max_position_embeddings": 256,
    "hidden_act": "silu", "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "norm_topk_prob": True,
    "rope_scaling": None, "use_cache": False, "attention_block_length": 4,
}


def published_weights(cfg: dict, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the published parameter names."""
    rnd = random_normal(seed)
    d, h, hk, dh = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def mlp(prefix, width):
        return {f"{prefix}.gate_proj.weight": rnd(width, d), f"{prefix}.up_proj.weight": rnd(width, d),
                f"{prefix}.down_proj.weight": rnd(d, width)}

    w = {"model.word_embeddings.weight": rnd(vocab, d, std=1.0), "model.norm.weight": 1 + rnd(d, std=0.1),
         "lm_head.weight": rnd(vocab, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w.update({f"{p}.input_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.post_attention_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.attention.query_key_value.weight": rnd((h + 2 * hk) * dh, d),
                  f"{p}.attention.query_key_value.bias": rnd((h + 2 * hk) * dh, std=0.1),
                  f"{p}.attention.query_layernorm.weight": 1 + rnd(dh, std=0.1),
                  f"{p}.attention.key_layernorm.weight": 1 + rnd(dh, std=0.1),
                  f"{p}.attention.dense.weight": rnd(d, h * dh)})
        if i < cfg["first_k_dense_replace"]:
            w.update(mlp(f"{p}.mlp", cfg["intermediate_size"]))
        else:
            w[f"{p}.mlp.gate.weight"] = rnd(cfg["num_experts"], d)
            w[f"{p}.mlp.gate.expert_bias"] = rnd(cfg["num_experts"], std=0.2)
            for j in range(cfg["num_experts"]):
                w.update(mlp(f"{p}.mlp.experts.{j}", cfg["moe_intermediate_size"]))
            w.update(mlp(f"{p}.mlp.shared_experts", cfg["moe_intermediate_size"] * cfg["num_shared_experts"]))
    return w


@pytest.fixture(scope="module")
def llada2_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("llada2") / "tiny-llada2", CONFIG,
                           lambda cfg: published_weights(cfg, cfg["vocab_size"]))


# ---- the reference: the official equations, one sequence, no padding, plain loops ----

def moe(x, w, p, c):
    """Token by token: sigmoid scores, biased routing, group-limited top-k, normalised weights."""
    out = []
    for t in range(x.shape[0]):
        scores = torch.sigmoid(x[t].float() @ w[f"{p}.mlp.gate.weight"].float().T)  # [E]
        routing = scores + w[f"{p}.mlp.gate.expert_bias"]
        groups = routing.view(c["n_group"], -1)
        group_scores = groups.topk(2, dim=-1).values.sum(-1)
        chosen_groups = set(group_scores.topk(c["topk_group"]).indices.tolist())
        per_group = c["num_experts"] // c["n_group"]
        candidates = [e for e in range(c["num_experts"]) if e // per_group in chosen_groups]
        ranked = sorted(candidates, key=lambda e: -routing[e].item())[: c["num_experts_per_tok"]]
        weights = torch.stack([scores[e] for e in ranked])
        weights = weights / (weights.sum() + 1e-20) * c["routed_scaling_factor"]
        y = sum(wt * swiglu(x[t], w, f"{p}.mlp.experts.{e}") for wt, e in zip(weights, ranked))
        out.append(y + swiglu(x[t], w, f"{p}.mlp.shared_experts"))
    return torch.stack(out)


def reference_logits(w, c, ids: list[int], block_length: int) -> torch.Tensor:
    t, h, hk, dh = len(ids), c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    n_blocks = (t + block_length - 1) // block_length
    block_mask = torch.tril(torch.ones(n_blocks, n_blocks)).repeat_interleave(block_length, 0) \
        .repeat_interleave(block_length, 1)[:t, :t]
    additive = torch.where(block_mask.bool(), 0.0, float("-inf"))
    rope_dim = int(dh * c["partial_rotary_factor"])
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, rope_dim, 2).float() / rope_dim))
    freqs = torch.arange(t).float()[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x = w["model.word_embeddings.weight"][torch.tensor(ids)]  # [T, D]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        n = rms(x, w[f"{p}.input_layernorm.weight"], c["rms_norm_eps"])
        qkv = (n @ w[f"{p}.attention.query_key_value.weight"].T + w[f"{p}.attention.query_key_value.bias"])
        qkv = qkv.view(t, h + 2 * hk, dh)
        q, k, v = qkv[:, :h].transpose(0, 1), qkv[:, h:h + hk].transpose(0, 1), qkv[:, h + hk:].transpose(0, 1)
        q = rms(q, w[f"{p}.attention.query_layernorm.weight"], c["rms_norm_eps"])
        k = rms(k, w[f"{p}.attention.key_layernorm.weight"], c["rms_norm_eps"])
        q = torch.cat([q[..., :rope_dim] * cos + rotate_half(q[..., :rope_dim]) * sin, q[..., rope_dim:]], -1)
        k = torch.cat([k[..., :rope_dim] * cos + rotate_half(k[..., :rope_dim]) * sin, k[..., rope_dim:]], -1)
        k, v = k.repeat_interleave(h // hk, 0), v.repeat_interleave(h // hk, 0)  # repeat_kv
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh) + additive, dim=-1, dtype=torch.float32)
        a = (att @ v).transpose(0, 1).reshape(t, h * dh)
        x = x + a @ w[f"{p}.attention.dense.weight"].T
        m = rms(x, w[f"{p}.post_attention_layernorm.weight"], c["rms_norm_eps"])
        x = x + (swiglu(m, w, f"{p}.mlp") if i < c["first_k_dense_replace"] else moe(m, w, p, c))
    x = rms(x, w["model.norm.weight"], c["rms_norm_eps"])
    return (x @ w["lm_head.weight"].T).float()


def test_logits_match_the_official_equations(llada2_dir):
    model = fewstep.load_model(llada2_dir)
    cfg = json.loads((llada2_dir / "config.json").read_text())
    from safetensors.torch import load_file

    w = load_file(llada2_dir / "model.safetensors")
    torch.manual_seed(0)
    for length in (5, 11, 17):
        ids = torch.randint(3, cfg["vocab_size"], (length,)).tolist()
        want = reference_logits(w, cfg, ids, cfg["attention_block_length"])
        got = model.module(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, length, dtype=torch.long))
        torch.testing.assert_close(got.logits[0], want, rtol=1e-4, atol=1e-4)
    # the block length matters: with a different one the reference disagrees
    assert not torch.allclose(reference_logits(w, cfg, ids, 8), want, rtol=1e-4, atol=1e-4)
    # a MoE layer routes different tokens to different experts (the router is exercised)
    assert model.module.model.layers[1].mlp.gate(torch.randn(16, 32))[0].unique().numel() > 3


def test_left_padding_and_parameter_names(llada2_dir):
    model = fewstep.load_model(llada2_dir)
    ids = torch.randint(3, 100, (1, 13))
    alone = model.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded = torch.cat([torch.zeros((1, 5), dtype=torch.long), ids], 1)
    att = torch.cat([torch.zeros((1, 5), dtype=torch.long), torch.ones_like(ids)], 1)
    torch.testing.assert_close(model.module(input_ids=padded, attention_mask=att).logits[:, 5:], alone)
    from safetensors.torch import load_file

    assert set(model.module.state_dict()) == set(load_file(llada2_dir / "model.safetensors"))


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_block_diffusion_decode_with_cache_is_exact(llada2_dir, cache):
    model = fewstep.load_model(llada2_dir)
    prompts = [model.encode_prompt(p.question) for p in arith.test_set()[:8]]
    base = dict(strategy="threshold", threshold=0.6, gen_length=16, block_length=4)
    plain = fewstep.generate(model, prompts, fewstep.DecodeConfig(**base))
    cached = fewstep.generate(model, prompts, fewstep.DecodeConfig(cache=cache, **base))
    assert [(r.token_ids, r.nfe) for r in cached] == [(r.token_ids, r.nfe) for r in plain]
    assert all(model.mask_id not in r.token_ids for r in plain)


@pytest.mark.parametrize("field,value", [("rope_scaling", {"type": "yarn", "factor": 2.0}),
                                         ("score_function", "softmax"), ("hidden_act", "gelu"),
                                         ("attention_block_length", 0)])
def test_unimplemented_config_values_are_refused(llada2_dir, tmp_path, field, value):
    assert_refused(llada2_dir, tmp_path, field, value)
