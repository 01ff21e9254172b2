"""LLaDA-MoE (inclusionAI's LLaDA-MoE-7B-A1B-Base / -Instruct): LLaDA with mixture-of-experts layers
(OLMoE-style), written from the published modelling code's equations (``modeling_lladamoe.py``).

config.json: ``architectures: ["LLaDAMoEModelLM"]`` with ``model_type`` ``llada`` as published (the
architecture decides, :func:`fewstep.models.registry.for_config`) or ``lladamoe``; fields
``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads``, ``dense_intermediate_size``, ``expert_intermediate_size``,
``shared_expert_intermediate_size`` (null: no shared expert), ``num_experts``,
``num_experts_per_tok``, ``moe_layer_freq`` (one entry per layer: 0 dense, else MoE),
``moe_router_enable_expert_bias``, ``qk_layernorm``, ``clip_qkv``, ``attention_bias``,
``rope_theta``, ``partial_rotary_factor``, ``rms_norm_eps``, ``hidden_act``, ``tie_word_embeddings``,
``max_position_embeddings``, ``eos_token_id``, ``pad_token_id``, ``mask_token_id``. Refused at load:
``rope_scaling``, a router score function other than softmax, ``routed_scaling_factor`` other than 1
and router groups (the published code implements neither), a ``moe_layer_freq`` of the wrong length.
``norm_topk_prob`` has no effect, as in the published code (which fixes it to false).

Per layer i (``model.layers.{i}.``), RMSNorm ``w * x / rms(x)`` in float32 cast back:

- ``h = x + self_attn.o_proj(Attn(input_layernorm(x)))``: projections ``self_attn.{q,k,v}_proj``
  (head dim ``hidden_size / num_attention_heads``), with ``qk_layernorm`` an RMSNorm over the head
  dimension (``self_attn.q_norm`` / ``k_norm``) on queries and keys, with ``clip_qkv`` queries, keys
  and values clamped to [-c, c]; rotary ("rotate half") on the first ``head_dim *
  partial_rotary_factor`` dimensions; scale ``1/sqrt(head_dim)``; full bidirectional attention (the
  padding mask only);
- ``m = post_attention_layernorm(h)``; dense layers: ``out = h + mlp(m)`` (SwiGLU ``mlp.{gate,up,
  down}_proj`` of width ``dense_intermediate_size``); MoE layers: router ``mlp.gate.weight`` [E, D],
  ``p = softmax(m W^T)`` in float32 (``+ mlp.expert_bias`` with expert bias), the
  ``num_experts_per_tok`` largest ``p`` kept as they are (not renormalised),
  ``out = h + sum_k p_k expert_k(m) (+ shared_expert(m))`` with experts ``mlp.experts.{j}`` of width
  ``expert_intermediate_size`` and the layer's ``shared_expert`` of width
  ``shared_expert_intermediate_size``.

Then ``model.norm`` and ``lm_head``; ``logits[:, i]`` predicts position i. The authors decode with
LLaDA's semi-autoregressive low-confidence remasking (the model card: gen_length 128, block 32,
steps 128) or dInfer's threshold decoder (threshold 0.9, block 32): fewstep's ``llada`` and
``threshold`` strategies.

Shapes: B batch, T sequence, W window, D hidden, H heads, Hk key/value heads, Dh head dim, E experts,
N tokens, k experts per token, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.errors import ModelLoadError
from fewstep.models.configs import config_dict, known_fields, refuse
from fewstep.models.kvcache import KVCache
from fewstep.models.layers import (
    ACTIVATIONS,
    Attention,
    DecoderLayer,
    DiffusionLMOutput,
    RMSNorm,
    StackedLM,
    SwiGLU,
    attention_inputs,
    output_head,
    rotary_tables,
    run_layers,
)

REFUSED = {"rope_scaling": (None,), "moe_router_score_function": (None, "softmax"),
           "routed_scaling_factor": (None, 1, 1.0), "router_num_group": (None, -2, 1),
           "router_topk_group": (None, -2, 1)}
AUTHORS = {"gen_length": 128, "block_length": 32, "steps": 128, "threshold": 0.9}
MASK_TOKENS = ("<|mask|>",)


@dataclass(frozen=True)
class LLaDAMoEConfig:
    vocab_size: int = 157184
    hidden_size: int = 2048
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    dense_intermediate_size: int = 8192
    expert_intermediate_size: int = 1024
    shared_expert_intermediate_size: int | None = None
    num_experts: int = 64
    num_experts_per_tok: int = 8
    moe_layer_freq: tuple[int, ...] = ()
    moe_router_enable_expert_bias: bool = False
    qk_layernorm: bool = True
    clip_qkv: float | None = None
    attention_bias: bool = False
    rope_theta: float = 50000.0
    partial_rotary_factor: float = 1.0
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 8192
    eos_token_id: int | None = 156892
    pad_token_id: int | None = 156892
    mask_token_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLaDAMoEConfig:
        """A published config.json; a value that changes the computation and is not implemented is
        refused (:class:`ModelLoadError` naming the field)."""
        for name, allowed in REFUSED.items():
            if d.get(name) not in allowed:
                raise refuse(name, d[name], "the published code implements " + " / ".join(map(repr, allowed)))
        kw = known_fields(cls, d)
        kw.setdefault("num_key_value_heads", kw.get("num_attention_heads", cls.num_attention_heads))
        n = kw.get("num_hidden_layers", cls.num_hidden_layers)
        kw["moe_layer_freq"] = tuple(int(f) for f in d.get("moe_layer_freq") or [1] * n)
        if "shared_expert_intermediate_size" in d:  # null is meaningful here: no shared expert
            kw["shared_expert_intermediate_size"] = d["shared_expert_intermediate_size"]
        cfg = cls(**kw)
        _check(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="lladamoe", architectures=["LLaDAMoEModelLM"],
                           moe_layer_freq=list(self.moe_layer_freq), moe_router_score_function="softmax",
                           routed_scaling_factor=1, rope_scaling=None)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def _check(cfg: LLaDAMoEConfig) -> None:
    if len(cfg.moe_layer_freq) != cfg.num_hidden_layers:
        raise refuse("moe_layer_freq", list(cfg.moe_layer_freq), f"one entry per layer ({cfg.num_hidden_layers})")
    if cfg.hidden_act not in ACTIVATIONS:
        raise refuse("hidden_act", cfg.hidden_act, "choose one of " + ", ".join(ACTIVATIONS))
    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise refuse("num_attention_heads", cfg.num_attention_heads,
                      "must divide hidden_size and be a multiple of num_key_value_heads")
    if not 0 < cfg.partial_rotary_factor <= 1 or cfg.rope_dim % 2:
        raise refuse("partial_rotary_factor", cfg.partial_rotary_factor, "an even share of the head in (0, 1]")
    if not 1 <= cfg.num_experts_per_tok <= cfg.num_experts:
        raise refuse("num_experts_per_tok", cfg.num_experts_per_tok, f"1 to num_experts={cfg.num_experts}")


class SparseMoE(nn.Module):
    """Softmax router, plain top-k, weights not renormalised."""

    expert_bias: torch.Tensor | None

    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.expert_intermediate_size, cfg.hidden_act)
                                     for _ in range(cfg.num_experts))
        if cfg.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))
        else:
            self.expert_bias = None

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """flat [N, D] -> expert indices [N, k], weights [N, k] in the activations' dtype."""
        p = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)  # [N, E]
        if self.expert_bias is not None:
            p = p + self.expert_bias
        w, idx = p.topk(self.k, dim=-1)
        return idx, w.to(flat.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [N, D]
        idx, w = self.route(flat)
        out = torch.zeros_like(flat)
        for e in idx.unique().tolist():  # experts that received tokens
            tok, slot = (idx == e).nonzero(as_tuple=True)
            out.index_add_(0, tok, self.experts[e](flat[tok]) * w[tok, slot, None])
        return out.view_as(x)


class MoELayer(DecoderLayer):
    """The decoder layer; a MoE layer's MLP is the sparse experts, plus the ``shared_expert`` when
    the config has one."""

    def __init__(self, cfg: LLaDAMoEConfig, i: int):
        moe = cfg.moe_layer_freq[i] != 0
        attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                         qkv_bias=cfg.attention_bias, o_bias=cfg.attention_bias, qk_norm=cfg.qk_layernorm,
                         eps=cfg.rms_norm_eps, clip=cfg.clip_qkv)
        mlp = SparseMoE(cfg) if moe else SwiGLU(cfg.hidden_size, cfg.dense_intermediate_size, cfg.hidden_act)
        super().__init__(attn, mlp, cfg.hidden_size, cfg.rms_norm_eps)
        if moe and cfg.shared_expert_intermediate_size is not None:
            self.shared_expert = SwiGLU(cfg.hidden_size, cfg.shared_expert_intermediate_size, cfg.hidden_act)

    def forward(self, x, rope, mask, kv=None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, mask, kv)
        m = self.post_attention_layernorm(h)
        y = self.mlp(m)
        if hasattr(self, "shared_expert"):
            y = y + self.shared_expert(m)
        return h + y


class _Inner(nn.Module):
    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoELayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LLaDAMoEModel(StackedLM):
    """``module(input_ids=..., attention_mask=...).logits`` [B, T, V]; the fewstep model protocol of
    :class:`fewstep.models.llada.LLaDAModel` (positions from the attention mask, ``logits_positions``,
    the approximate key/value ``cache`` of a bidirectional model)."""

    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__(cfg, _Inner(cfg))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_positions: slice | None = None,
        cache: KVCache | None = None,
        cache_rows: torch.Tensor | None = None,
        window: slice | None = None,
    ) -> DiffusionLMOutput:
        """input_ids / inputs_embeds [B, W] (W = T, or the window's length with ``window``);
        attention_mask and position_ids [B, T]; ``logits_positions`` counts from the window's start."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, W, D]
        mask, position_ids = attention_inputs(x, attention_mask, position_ids, window, cache)  # [B, 1, 1, T], [B, W]
        rope = rotary_tables(position_ids, self.config.rope_dim, self.config.rope_theta, x.dtype)  # [B, 1, W, r]
        x = run_layers(self.model.layers, x, rope, mask, cache, cache_rows, window)
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return DiffusionLMOutput(logits=output_head(x, logits_positions, self.model.norm, head).float())


def load_llada_moe(path, config, defaults, name, device, dtype, trust_remote_code):
    """fewstep's own LLaDA-MoE; the mask id from the tokenizer's mask token, else ``mask_token_id``,
    else ``<|mask|>`` in the vocabulary (156895 in the published one). Decode defaults: the model
    card's (:data:`AUTHORS`) under the directory's."""
    from fewstep.models.adapter import DiffusionModel
    from fewstep.models.loading import _fallback, _native, _tokenizer

    tied = "lm_head.weight" if config.get("tie_word_embeddings") else None
    cfg, module = _native(path, config, tied, device, dtype)
    tok = _tokenizer(path, trust_remote_code, fallback=_fallback(config))
    vocab = tok.get_vocab()
    found = [vocab[t] for t in MASK_TOKENS if t in vocab]
    mask = next((i for i in (tok.mask_token_id, cfg.mask_token_id, *found) if i is not None), None)
    if mask is None:
        raise ModelLoadError(f"{path}: no mask token (neither the tokenizer's mask_token, mask_token_id, nor <|mask|>)")
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else tok.eos_token_id
    pad = next(i for i in (cfg.pad_token_id, tok.pad_token_id, eos) if i is not None)
    stop = tuple(vocab[t] for t in ("<|role_end|>", "<|eot_id|>") if t in vocab and vocab[t] != eos)
    return DiffusionModel(module=module, tokenizer=tok, name=name, eos_id=int(eos), pad_id=int(pad),
                          max_length=cfg.max_position_embeddings, stop_ids=stop,
                          decode_defaults={**AUTHORS, **defaults}, mask_id=int(mask))
