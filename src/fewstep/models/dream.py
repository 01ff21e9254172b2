"""Dream (Dream-org's Dream-v0 7B family), written from the published architecture: Qwen2 decoder
layers with full bidirectional attention (the padding mask only) and *shifted* logits (position i
is predicted by the output at i - 1; the adapter realigns them).

Parameter names and config.json fields are those of the published checkpoints (and of
transformers' Qwen2): ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (q, k, v
with bias), ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.layers.{i}.{input_layernorm,
post_attention_layernorm}``, ``model.norm``, ``lm_head`` (absent with ``tie_word_embeddings``).
No code from the checkpoint's directory runs.

Numerics follow Qwen2's: RMSNorm in float32 cast back before the weight; rotary cos / sin computed
in float32 and applied in the activations' dtype ("rotate half" convention).

Shapes: B batch, T sequence, W window, D hidden, H heads, Hk key/value heads, Dh head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.models.configs import check_qwen2_layout, check_qwen_rotary, config_dict, known_fields, read_qwen, refuse
from fewstep.models.kvcache import KVCache
from fewstep.models.layers import (
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

REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "rms_norm_eps")


@dataclass(frozen=True)
class DreamConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DreamConfig:
        """A published Dream config.json; a value that would change the computation and that this
        implementation does not reproduce is refused (:class:`ModelLoadError` naming the field)."""
        d, params = read_qwen(d, REQUIRED)
        _check(d, params)
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="Dream", architectures=["DreamModel"], rope_scaling=None,
                           use_sliding_window=False, attention_dropout=0.0)


def _check(d: dict[str, Any], params: dict[str, Any]) -> None:
    check_qwen_rotary(d, params, "full attention")
    if d["hidden_size"] % d["num_attention_heads"] or d["num_attention_heads"] % d["num_key_value_heads"]:
        raise refuse("num_attention_heads", d["num_attention_heads"],
                     "must divide hidden_size and be a multiple of num_key_value_heads")
    check_qwen2_layout(d, "Dream")


def dream_layer(cfg: DreamConfig) -> DecoderLayer:
    """Qwen2's layer: q, k and v projections with a bias, o without, no query/key norm."""
    attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                     qkv_bias=True, o_bias=False)
    mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
    return DecoderLayer(attn, mlp, cfg.hidden_size, cfg.rms_norm_eps)


class _DreamBase(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(dream_layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(StackedLM):
    """``module(input_ids=..., attention_mask=...).logits`` [B, T, V], unshifted as Dream computes
    them (``logits[:, i]`` predicts position i + 1). The same model protocol as
    :class:`~fewstep.models.llada.LLaDAModel`: ``logits_positions`` (a slice of output rows),
    positions from the attention mask (left padding computes a row as if it stood alone), and a
    key/value ``cache`` with ``cache_rows`` and ``window`` (:mod:`fewstep.models.kvcache`)."""

    def __init__(self, cfg: DreamConfig):
        super().__init__(cfg, _DreamBase(cfg))

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
        mask, position_ids = attention_inputs(x, attention_mask, position_ids, window, cache)
        rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        x = run_layers(self.model.layers, x, rope, mask, cache, cache_rows, window)
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return DiffusionLMOutput(logits=output_head(x, logits_positions, self.model.norm, head))
