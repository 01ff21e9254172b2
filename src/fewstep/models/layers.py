"""The pieces fewstep's native models share: RMSNorm, rotary embedding, attention over a given mask
with the key/value cache, the SwiGLU MLP, the Qwen-layout attention and decoder layer, and the model
forward around the layer stack (attention inputs from the attention mask, the layers, the head).

Each model module keeps its parameter names (those of its published checkpoints) and what differs in
its architecture; these functions compute what the published equations share, op for op.

Numerics are transformers' Qwen2 ones: RMSNorm statistics in float32, cast back before the weight;
rotary cos / sin computed in float32 and cast to the activations' dtype ("rotate half" convention).

Shapes: B batch, T sequence, W window (T without one), D hidden, H heads, Hk key/value heads, Dh head
dim, r rotary dims, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.models.blockcausal import block_causal_mask
from fewstep.models.kvcache import KVCache
from fewstep.models.positions import key_mask_and_positions

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
# a layer's cache update: the window's keys and values [B, Hk, W, Dh] -> the ones attended to [B, Hk, T, Dh]
KV = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dimension, computed in float32 and cast back to x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """``weight * x / rms(x)`` (Qwen2's: the weight applied after the cast back)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalize(x, self.eps)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, T, Dh]: angles in float32 (``[freqs, freqs]``), the tables cast to ``dtype``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, Dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh] rotated ("rotate half") by cos, sin [B, 1, T, Dh], in x's dtype."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first r dimensions of x [B, H, T, Dh] (cos, sin [B, 1, T, r]); the rest pass."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return rotate(x, cos, sin)
    return torch.cat([rotate(x[..., :r], cos, sin), x[..., r:]], dim=-1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, W, H * Dh] -> [B, W, H, Dh]."""
    return x.view(*x.shape[:2], heads, -1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           kv: KV | None) -> torch.Tensor:
    """Scaled dot product attention of q [B, H, W, Dh] to k, v [B, Hk, W, Dh] (with ``kv``, to the
    ones it returns [B, Hk, T, Dh]) under ``mask`` (bool, broadcast to [B, H, W, T]; None: every key),
    scale 1/sqrt(Dh), key/value heads repeated for grouped queries -> [B, W, H * Dh]."""
    if kv is not None:
        k, v = kv(k, v)
    rep = q.shape[1] // k.shape[1]
    if rep != 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(q.shape[-1]))
    return a.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def swiglu(x: torch.Tensor, gate: nn.Module, up: nn.Module, down: nn.Module,
           act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))``."""
    return down(act(gate(x)) * up(x))


class SwiGLU(nn.Module):
    """The gated MLP ``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases."""

    def __init__(self, d: int, hidden: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj, self.act)


class Attention(nn.Module):
    """Qwen-layout attention: ``self_attn.{q,k,v,o}_proj``; with ``qk_norm`` an RMSNorm over the head
    dimension on queries and keys (``q_norm``, ``k_norm``), with ``clip`` queries, keys and values
    clamped to [-clip, clip] (after the norms), then rotary on queries and keys."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, *, qkv_bias: bool, o_bias: bool,
                 qk_norm: bool = False, eps: float = 1e-6, clip: float | None = None):
        super().__init__()
        self.h, self.hk, self.clip = heads, kv_heads, clip
        self.q_proj = nn.Linear(d, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, d, bias=o_bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                kv: KV | None) -> torch.Tensor:
        """x [B, W, D] -> [B, W, D]; rope: cos, sin [B, 1, W, r]; mask [B, 1, 1|W, T]."""
        q, k = split_heads(self.q_proj(x), self.h), split_heads(self.k_proj(x), self.hk)  # [B, W, H|Hk, Dh]
        v = split_heads(self.v_proj(x), self.hk)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip is not None:
            q, k, v = (z.clamp(-self.clip, self.clip) for z in (q, k, v))
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H|Hk, W, Dh]
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return self.o_proj(attend(q, k, v, mask, kv))


class DecoderLayer(nn.Module):
    """``h = x + self_attn(input_layernorm(x))``, ``out = h + mlp(post_attention_layernorm(h))``."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, d: int, eps: float):
        super().__init__()
        self.self_attn = attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                kv: KV | None = None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, mask, kv)
        return h + self.mlp(self.post_attention_layernorm(h))


def attention_inputs(x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                     window: slice | None, cache: KVCache | None,
                     block: int = 0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The attention mask (bool [B, 1, 1, T] of the real keys, None: every key; with ``block`` > 0,
    block-causal in blocks of that length, [B, 1, W, T]) and the position ids [B, W] of a forward whose
    input x is [B, W, D]; ``attention_mask`` / ``position_ids`` [B, T] (positions: the count of real
    tokens before each, :mod:`fewstep.models.positions`)."""
    b, w, _ = x.shape
    if block == 0:
        return key_mask_and_positions(attention_mask, position_ids, b, w, x.device, window, cache is not None)
    key_mask, position_ids = key_mask_and_positions(attention_mask, position_ids, b, w, x.device, None, False)
    mask = block_causal_mask(position_ids, window, block)  # [B, 1, W, T]: keys of the query's block or earlier
    if key_mask is not None:
        mask = mask & key_mask
    if window is not None:
        if cache is None:
            raise ValueError("a window forward needs a cache")
        position_ids = position_ids[:, window]
    return mask, position_ids


def run_layers(layers: nn.ModuleList, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               mask: torch.Tensor | None, cache: KVCache | None, cache_rows: torch.Tensor | None,
               window: slice | None) -> torch.Tensor:
    """x [B, W, D] through every layer; with a ``cache`` each layer stores (and, with a ``window``,
    reads) its keys and values in it (:mod:`fewstep.models.kvcache`)."""
    for i, layer in enumerate(layers):
        kv = None if cache is None else partial(cache.update, i, rows=cache_rows, window=window)
        x = layer(x, rope, mask, kv)
    return x


def output_head(x: torch.Tensor, logits_positions: slice | None, norm: nn.Module, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """The final norm and the output head [V, D] on x [B, W, D] (only the rows ``logits_positions``
    when given) -> logits [B, W', V]."""
    if logits_positions is not None:
        x = x[:, logits_positions]
    return F.linear(norm(x), weight, bias)


@dataclass
class DiffusionLMOutput:
    """A model forward's result: logits [B, W, V] (the rows ``logits_positions`` only, when given)."""

    logits: torch.Tensor


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StackedLM(nn.Module):
    """What the decoder-stack models share around their ``forward``: the config, the stack ``model``
    (``embed_tokens``, ``layers``, ``norm``), an output head unless the embeddings are tied, the
    model protocol's flags (``logits_positions`` and a key/value ``cache`` are supported)."""

    supports_logits_positions = True
    supports_cache = True
    config: Any
    model: Any  # the stack: embed_tokens, layers, norm

    def __init__(self, cfg: Any, stack: nn.Module):
        super().__init__()
        self.config = cfg
        self.model = stack
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def num_parameters(self) -> int:
        return num_parameters(self)
