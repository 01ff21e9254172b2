"""LLaDA-MoE on random tiny configs saved in the published layout (``model_type: llada`` beside
``architectures: ["LLaDAMoEModelLM"]``, as inclusionAI publishes it), against a forward written here
from the published modelling code's equations (modeling_lladamoe.py), independently of fewstep's
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
from model_helpers import assert_refused, random_normal, rms, swiglu, write_model_dir

# every optional path on: a dense layer, a shared expert, expert bias, partial rotary, clip_qkv
CONFIG = {
    "model_type": "llada", "architectures": ["LLaDAMoEModelLM"], "hidden_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "dense_intermediate_size": 40,
    "expert_intermediate_size": 12, "shared_expert_intermediate_size": 16, "num_experts": 8,
    "num_experts_per_tok": 3, "moe_layer_freq": [0, 1, 1], "moe_router_enable_expert_bias": True,
    "moe_router_score_function": "softmax", "routed_scaling_factor": 1, "router_num_group": None,
    "router_topk_group": None, "norm_topk_prob": None, "qk_layernorm": True, "clip_qkv": 2.0,
    "attention_bias": False, "rope_theta": 50000, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "tie_word_embeddings": False, "max_position_embeddings": 256, "rope_scaling": None,
    "use_cache": False, "output_router_logits": False, "router_aux_loss_coef": 0.01,
    "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                 "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"},
}
# the published 7B-A1B shape, scaled down: every layer MoE, no shared expert, no bias, full rotary
PUBLISHED_LIKE = {**CONFIG, "model_type": "lladamoe", "moe_layer_freq": [1, 1, 1], "num_key_value_heads": 4,
                  "shared_expert_intermediate_size": None, "moe_router_enable_expert_bias": False,
                  "partial_rotary_factor": 1, "clip_qkv": None, "norm_topk_prob": False}


def published_weights(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    rnd = random_normal(seed)
    d, h, hk = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    dh = d // h

    def mlp(prefix, width):
        return {f"{prefix}.gate_proj.weight": rnd(width, d), f"{prefix}.up_proj.weight": rnd(width, d),
                f"{prefix}.down_proj.weight": rnd(d, width)}

    w = {"model.embed_tokens.weight": rnd(c["vocab_size"], d, std=1.0), "model.norm.weight": 1 + rnd(d, std=0.1),
         "lm_head.weight": rnd(c["vocab_size"], d)}
    for i, freq in enumerate(c["moe_layer_freq"]):
        p = f"model.layers.{i}"
        w.update({f"{p}.input_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.post_attention_layernorm.weight": 1 + rnd(d, std=0.1),
                  f"{p}.self_attn.q_proj.weight": rnd(h * dh, d), f"{p}.self_attn.k_proj.weight": rnd(hk * dh, d),
                  f"{p}.self_attn.v_proj.weight": rnd(hk * dh, d), f"{p}.self_attn.o_proj.weight": rnd(d, d),
                  f"{p}.self_attn.q_norm.weight": 1 + rnd(dh, std=0.1),
                  f"{p}.self_attn.k_norm.weight": 1 + rnd(dh, std=0.1)})
        if freq == 0:
            w.update(mlp(f"{p}.mlp", c["dense_intermediate_size"]))
            continue
        w[f"{p}.mlp.gate.weight"] = rnd(c["num_experts"], d)
        if c["moe_router_enable_expert_bias"]:
            w[f"{p}.mlp.expert_bias"] = rnd(c["num_experts"], std=0.05)
        for j in range(c["num_experts"]):
            w.update(mlp(f"{p}.mlp.experts.{j}", c["expert_intermediate_size"]))
        if c["shared_expert_intermediate_size"] is not None:
            w.update(mlp(f"{p}.shared_expert", c["shared_expert_intermediate_size"]))
    return w


def make_dir(root: Path, config: dict) -> Path:
    return write_model_dir(root / "tiny-llada-moe", config, published_weights)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory) -> Path:
    return make_dir(tmp_path_factory.mktemp("lladamoe"), CONFIG)


# ---- the reference: the published equations, one sequence, plain loops ----

def rope(x, cos, sin):
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat((-rot[..., r // 2:], rot[..., :r // 2]), dim=-1)
    return torch.cat((rot * cos + half * sin, rest), dim=-1)


def moe(x, w, p, c):
    """Token by token: softmax router (+ expert bias), top-k of those scores, no renormalisation."""
    out = []
    for t in range(x.shape[0]):
        scores = torch.softmax(x[t] @ w[f"{p}.mlp.gate.weight"].T, dim=-1)
        if c["moe_router_enable_expert_bias"]:
            scores = scores + w[f"{p}.mlp.expert_bias"]
        ranked = sorted(range(c["num_experts"]), key=lambda e: -scores[e].item())[: c["num_experts_per_tok"]]
        y = sum(scores[e] * swiglu(x[t], w, f"{p}.mlp.experts.{e}") for e in ranked)
        if c["shared_expert_intermediate_size"] is not None:
            y = y + swiglu(x[t], w, f"{p}.shared_expert")
        out.append(y)
    return torch.stack(out)


def reference_logits(w, c, ids: list[int]) -> torch.Tensor:
    t, h, hk, eps = len(ids), c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    dh = c["hidden_size"] // h
    r = int(dh * c["partial_rotary_factor"])
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, r, 2).float() / r))
    freqs = torch.arange(t).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    clip = c["clip_qkv"] or float("inf")
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i, freq in enumerate(c["moe_layer_freq"]):
        p = f"model.layers.{i}"
        a = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        q = rms((a @ w[f"{p}.self_attn.q_proj.weight"].T).view(t, h, dh), w[f"{p}.self_attn.q_norm.weight"], eps)
        k = rms((a @ w[f"{p}.self_attn.k_proj.weight"].T).view(t, hk, dh), w[f"{p}.self_attn.k_norm.weight"], eps)
        v = (a @ w[f"{p}.self_attn.v_proj.weight"].T).view(t, hk, dh)
        q, k, v = (z.clamp(-clip, clip).transpose(0, 1) for z in (q, k, v))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(h // hk, 0), v.repeat_interleave(h // hk, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1)  # bidirectional
        x = x + (att @ v).transpose(0, 1).reshape(t, -1) @ w[f"{p}.self_attn.o_proj.weight"].T
        m = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        x = x + (swiglu(m, w, f"{p}.mlp") if freq == 0 else moe(m, w, p, c))
    return rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def check_against_reference(path: Path) -> None:
    model = fewstep.load_model(path)
    cfg = json.loads((path / "config.json").read_text())
    w = load_file(path / "model.safetensors")
    torch.manual_seed(0)
    for length in (4, 13):
        ids = torch.randint(5, cfg["vocab_size"], (length,)).tolist()
        got = model.module(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, length, dtype=torch.long))
        assert (got.logits[0] - reference_logits(w, cfg, ids)).abs().max() < 1e-4
    assert set(model.module.state_dict()) == set(w)  # the published parameter names, nothing else


def test_logits_match_the_published_equations(moe_dir):
    check_against_reference(moe_dir)
    model = fewstep.load_model(moe_dir)
    assert type(model.module).__name__ == "LLaDAMoEModel"  # chosen by architectures over model_type "llada"
    assert model.module.model.layers[1].mlp.route(torch.randn(16, 32))[0].unique().numel() > 3  # routing varies


def test_published_shape_under_its_own_model_type(tmp_path):
    check_against_reference(make_dir(tmp_path, PUBLISHED_LIKE))


def test_left_padding_and_decoding(moe_dir):
    model = fewstep.load_model(moe_dir)
    ids = torch.randint(5, 100, (1, 9))
    alone = model.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    pad = torch.zeros((1, 4), dtype=torch.long)
    padded = model.module(input_ids=torch.cat([pad, ids], 1), attention_mask=torch.cat([pad, torch.ones_like(ids)], 1))
    torch.testing.assert_close(padded.logits[:, 4:], alone)
    prompts = [model.encode_prompt(p.question) for p in arith.test_set()[:4]]
    for strategy, extra in (("llada", {"steps": 16}), ("threshold", {"threshold": 0.9})):
        out = fewstep.generate(model, prompts, fewstep.DecodeConfig(strategy=strategy, gen_length=16, block_length=8,
                                                                    **extra))
        assert all(model.mask_id not in r.token_ids and len(r.token_ids) == 16 for r in out)
    assert model.decode_defaults["block_length"] == 32 and model.decode_defaults["threshold"] == 0.9


@pytest.mark.parametrize("field,value", [("rope_scaling", {"type": "linear", "factor": 2.0}),
                                         ("moe_router_score_function", "sigmoid"), ("routed_scaling_factor", 2.5),
                                         ("router_num_group", 4), ("moe_layer_freq", [1, 1]), ("hidden_act", "tanh")])
def test_unimplemented_config_values_are_refused(moe_dir, tmp_path, field, value):
    assert_refused(moe_dir, tmp_path, field, value)


def test_auto_classes_open_the_lladamoe_model_type(tmp_path):
    import transformers

    path = make_dir(tmp_path, PUBLISHED_LIKE)
    fewstep.register_auto_classes()
    auto = transformers.AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=False)
    assert type(auto).__name__ == "LLaDAMoEForMaskedLM"
    ids = torch.randint(5, 100, (1, 7))
    want = fewstep.load_model(path).module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(auto(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, want)
