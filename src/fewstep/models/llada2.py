"""LLaDA 2.x (inclusionAI's LLaDA2.0-mini / -flash): the Ling / Bailing MoE layout with block-causal
attention, written from the published modelling code's equations (``modeling_llada2_moe.py``).

config.json (``model_type: llada2_moe``): ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size`` (dense
layers), ``moe_intermediate_size``, ``num_experts``, ``num_shared_experts``,
``num_experts_per_tok``, ``n_group``, ``topk_group``, ``routed_scaling_factor``,
``first_k_dense_replace``, ``rope_theta``, ``partial_rotary_factor``, ``rms_norm_eps``,
``use_qkv_bias``, ``use_bias``, ``tie_word_embeddings``, ``vocab_size``,
``max_position_embeddings``, ``eos_token_id``, ``pad_token_id``; values this implementation does
not reproduce (``rope_scaling``, a router other than sigmoid, an activation other than silu) are
refused at load. The attention block length is not in the published config (the reference
``generate`` takes ``block_length=32``): ``attention_block_length`` in config.json, default 32.

Per layer i (``model.layers.{i}.``), with RMSNorm ``w * x / rms(x)`` computed in float32:

- ``h = x + attention.dense(Attn(n))``, ``n = input_layernorm(x)``: one fused projection
  ``attention.query_key_value`` split into H query, Hk key and Hk value heads of ``head_dim``;
  ``attention.query_layernorm`` / ``key_layernorm`` (RMSNorm over the head dimension) on queries
  and keys, then rotary embedding on the first ``head_dim * partial_rotary_factor`` dimensions
  ("rotate half", inverse frequencies ``theta^(-2j/rope_dim)``), scaled dot product with scale
  ``1/sqrt(head_dim)``, block-causal mask (attention blocks from the sequence start);
- ``out = h + mlp(post_attention_layernorm(h))``; ``mlp`` is a SwiGLU MLP
  (``gate_proj``, ``up_proj``, ``down_proj``: ``down(silu(gate(m)) * up(m))``) for i <
  ``first_k_dense_replace``, else a mixture of experts: router ``mlp.gate.weight`` [E, D] in
  float32, ``s = sigmoid(m W^T)``; routing scores ``s + mlp.gate.expert_bias``; experts in
  ``n_group`` groups, a group's score the sum of its two best routing scores, the ``topk_group``
  best groups kept; the ``num_experts_per_tok`` best experts of those (by routing score); weights
  ``s`` of those experts (without the bias) divided by their sum (+1e-20, when more than one) times
  ``routed_scaling_factor``; output ``sum_k w_k expert_k(m) + shared_experts(m)`` (``mlp.experts.{j}``
  and ``mlp.shared_experts`` are SwiGLU MLPs, the shared one of width ``moe_intermediate_size *
  num_shared_experts``).

Then ``model.norm`` and ``lm_head`` (logits in float32). ``logits[:, i]`` predicts position i.

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
    KV,
    DiffusionLMOutput,
    RMSNorm,
    SwiGLU,
    apply_rotary,
    attend,
    attention_inputs,
    num_parameters,
    output_head,
    rotary_tables,
    run_layers,
)


@dataclass(frozen=True)
class LLaDA2Config:
    vocab_size: int = 157184
    hidden_size: int = 2048
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 5120
    moe_intermediate_size: int = 512
    num_experts: int | None = 256
    num_shared_experts: int | None = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 1
    rope_theta: float = 600000.0
    partial_rotary_factor: float = 0.5
    rms_norm_eps: float = 1e-6
    use_qkv_bias: bool = False
    use_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    eos_token_id: int = 156892
    pad_token_id: int = 156892
    attention_block_length: int = 32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLaDA2Config:
        """A published config.json; values that change the computation and are not implemented are
        refused (:class:`ModelLoadError` naming the field)."""
        refused = {"rope_scaling": None, "hidden_act": "silu", "score_function": "sigmoid",
                   "moe_router_enable_expert_bias": True, "norm_head": False, "use_rmsnorm": True}
        for name, only in refused.items():
            if name in d and d[name] != only:
                raise refuse(name, d[name], f"only {only!r}")
        kw = known_fields(cls, d, keep_none=True)
        if kw.get("head_dim") is None:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        cfg = cls(**kw)
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelLoadError(f"config field num_key_value_heads={cfg.num_key_value_heads} must divide "
                                 f"num_attention_heads={cfg.num_attention_heads}")
        if cfg.num_experts is not None and cfg.num_experts % cfg.n_group:
            raise ModelLoadError(f"config field n_group={cfg.n_group} must divide num_experts={cfg.num_experts}")
        if isinstance(cfg.attention_block_length, bool) or not isinstance(cfg.attention_block_length, int) \
                or cfg.attention_block_length < 1:
            raise ModelLoadError(f"config field attention_block_length={cfg.attention_block_length!r} must be >= 1")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="llada2_moe", architectures=["LLaDA2MoeModelLM"], hidden_act="silu",
                           score_function="sigmoid", rope_scaling=None)

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


class Gate(nn.Module):
    """The sigmoid router with expert bias and group-limited top-k."""

    expert_bias: torch.Tensor  # [E] a buffer, stored in the checkpoint

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        assert cfg.num_experts is not None
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> expert indices [N, k], weights [N, k] (float32)."""
        c = self.cfg
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))  # [N, E]
        routing = scores + self.expert_bias
        n = routing.shape[0]
        groups = routing.view(n, c.n_group, -1)  # [N, G, E/G]
        group_score = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)  # [N, G]
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(c.topk_group, dim=-1).indices, 1.0)
        allowed = keep.bool()[..., None].expand_as(groups).reshape(n, -1)  # [N, E]
        idx = routing.masked_fill(~allowed, float("-inf")).topk(c.num_experts_per_tok, dim=-1).indices  # [N, k]
        w = scores.gather(1, idx)
        if c.num_experts_per_tok > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * c.routed_scaling_factor


class MoE(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        assert cfg.num_experts is not None
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        self.gate = Gate(cfg)
        self.shared_experts = (SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts)
                               if cfg.num_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]: each token's experts, weighted, plus the shared experts."""
        flat = x.reshape(-1, x.shape[-1])  # [N, D]
        idx, w = self.gate(flat)  # [N, k]
        out = torch.zeros(flat.shape, dtype=w.dtype, device=x.device)  # [N, D] accumulated in float32
        for e in idx.unique().tolist():  # experts that received tokens (not a loop over the batch)
            tok, slot = (idx == e).nonzero(as_tuple=True)
            out.index_add_(0, tok, self.experts[e](flat[tok]).to(w.dtype) * w[tok, slot, None])
        y = out.to(x.dtype).view_as(x)
        return y if self.shared_experts is None else y + self.shared_experts(x)


class Attention(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.h, self.hk, self.dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, (self.h + 2 * self.hk) * self.dh, bias=cfg.use_qkv_bias)
        self.query_layernorm = RMSNorm(self.dh, cfg.rms_norm_eps)
        self.key_layernorm = RMSNorm(self.dh, cfg.rms_norm_eps)
        self.dense = nn.Linear(self.h * self.dh, cfg.hidden_size, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                kv: KV | None) -> torch.Tensor:
        """x [B, W, D] -> [B, W, D]; one fused projection split into query, key and value heads."""
        b, w, _ = x.shape
        qkv = self.query_key_value(x).view(b, w, self.h + 2 * self.hk, self.dh)
        q, k, v = (z.transpose(1, 2) for z in qkv.split([self.h, self.hk, self.hk], dim=2))  # [B, *, W, Dh]
        q, k = apply_rotary(self.query_layernorm(q), *rope), apply_rotary(self.key_layernorm(k), *rope)
        return self.dense(attend(q, k, v, mask, kv))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLaDA2Config, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        moe = cfg.num_experts is not None and i >= cfg.first_k_dense_replace
        self.mlp: nn.Module = MoE(cfg) if moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, rope, mask, kv=None):
        h = x + self.attention(self.input_layernorm(x), rope, mask, kv)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Inner(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LLaDA2Model(nn.Module):
    """``module(input_ids=..., attention_mask=...).logits`` [B, T, V]; the fewstep model protocol of
    :class:`fewstep.models.llada.LLaDAModel`: positions from the attention mask (left padding changes
    nothing), ``logits_positions``, and a key/value ``cache`` with ``cache_rows`` / ``window``
    (:mod:`fewstep.models.kvcache`). Attention is block-causal (:mod:`fewstep.models.blockcausal`)."""

    supports_logits_positions = True
    supports_cache = True

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.config = cfg
        self.model = _Inner(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.word_embeddings

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
        x = self.model.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, W, D]
        mask, position_ids = attention_inputs(x, attention_mask, position_ids, window, cache,
                                              self.config.attention_block_length)  # [B, 1, W, T], [B, W]
        rope = rotary_tables(position_ids, self.config.rope_dim, self.config.rope_theta, x.dtype)  # [B, 1, W, r]
        x = run_layers(self.model.layers, x, rope, mask, cache, cache_rows, window)
        head = self.model.word_embeddings.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return DiffusionLMOutput(logits=output_head(x, logits_positions, self.model.norm, head).float())

    def num_parameters(self) -> int:
        return num_parameters(self)
