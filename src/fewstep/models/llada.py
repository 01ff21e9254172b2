"""A LLaDA-architecture masked diffusion transformer, written from the published facts.

Parameter names and config.json fields follow the public LLaDA checkpoints (OLMo-derived names),
so the same class loads a real LLaDA directory and the bundled lab model ``tiny-dlm``:
``model.transformer.wte``, ``model.transformer.blocks.{i}.{attn_norm,q_proj,k_proj,v_proj,attn_out,
ff_norm,ff_proj,up_proj,ff_out}``, ``model.transformer.ln_f``, ``model.transformer.ff_out``.

Shapes: B batch, T sequence, D d_model, H heads, Hk key/value heads, Dh head dim, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.models.configs import config_dict, known_fields, refuse
from fewstep.models.kvcache import KVCache
from fewstep.models.layers import (
    ACTIVATIONS as ACTIVATION_FNS,
)
from fewstep.models.layers import (
    KV,
    DiffusionLMOutput,
    attend,
    attention_inputs,
    num_parameters,
    output_head,
    rms_normalize,
    run_layers,
    swiglu,
)

# The official LLaDA code's defaults (its OLMo-derived ModelConfig) for fields a config.json leaves out.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False, "rope": False,
    "rope_full_precision": True, "flash_attention": False, "multi_query_attention": None,
    "attention_layer_norm": False, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 1024, "rope_theta": 10000.0,
    "include_qkv_bias": False, "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False,
    "vocab_size": 50257, "embedding_size": 50304, "weight_tying": True, "eos_token_id": 50256,
    "pad_token_id": 50256, "mask_token_id": 50256,
}
NORMS = ("rms", "gemma_rms", "default", "low_precision")  # low_precision == default outside autocast
ACTIVATIONS = ("silu", "gelu", "relu")
# Fields whose only implemented value is this one (anything else changes the math or the layout).
FIXED = {"block_type": "llama", "rope": True, "alibi": False, "block_group_size": 1, "rope_full_precision": True,
         "attention_layer_norm": False, "clip_qkv": None, "yarn": False}


@dataclass(frozen=True)
class LLaDAConfig:
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 4
    n_layers: int = 4
    mlp_hidden_size: int = 704
    vocab_size: int = 256
    embedding_size: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    mask_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    max_sequence_length: int = 4096
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = None  # None: as include_bias
    activation_type: str = "silu"
    input_emb_norm: bool = False  # embeddings times sqrt(d_model)
    scale_logits: bool = False  # logits times 1 / sqrt(d_model)
    # block-causal attention (block diffusion): 0 is LLaDA's full bidirectional attention; N > 0 cuts
    # the sequence into blocks of N positions counted from its first real token (position ids from
    # the attention mask), attention bidirectional inside a block and causal across blocks
    attention_block_length: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLaDAConfig:
        """A config.json as the official code reads it: absent fields take its defaults; every value
        that changes the computation is implemented or refused (:class:`ModelLoadError` naming the field)."""
        d = {**OFFICIAL_DEFAULTS, **d}
        _check_contract(d)
        kw = known_fields(cls, d, keep_none=True)
        kw["n_kv_heads"] = _effective_kv_heads(d)
        if kw.get("embedding_size") is None:
            kw["embedding_size"] = kw["vocab_size"]
        if kw.get("mlp_hidden_size") is None:
            kw["mlp_hidden_size"] = int(d["mlp_ratio"]) * int(kw["d_model"])
        return cls(**kw)

    @property
    def norm_bias(self) -> bool:
        return self.include_bias if self.bias_for_layer_norm is None else bool(self.bias_for_layer_norm)

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="llada", architectures=["LLaDAModelLM"], rope=True, block_type="llama")


def _check_contract(d: dict[str, Any]) -> None:
    for name, only in FIXED.items():
        value = d.get(name, only)
        if value != only and not (only is False and value is None):
            raise refuse(name, value, f"fewstep implements {name}={only!r} only")
    if d["layer_norm_type"] not in NORMS:
        raise refuse("layer_norm_type", d["layer_norm_type"], "choose one of " + ", ".join(NORMS))
    if d["activation_type"] not in ACTIVATIONS:
        why = ("the official llama block cannot run it" if d["activation_type"] == "swiglu"
               else "choose one of " + ", ".join(ACTIVATIONS))
        raise refuse("activation_type", d["activation_type"], why)
    for name in ("include_bias", "include_qkv_bias", "weight_tying", "input_emb_norm", "scale_logits",
                 "layer_norm_with_affine"):
        if not isinstance(d[name], bool):
            raise refuse(name, d[name], "must be true or false")
    if d["bias_for_layer_norm"] is not None and not isinstance(d["bias_for_layer_norm"], bool):
        raise refuse("bias_for_layer_norm", d["bias_for_layer_norm"], "must be true, false or null")
    block = d.get("attention_block_length", 0)
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise refuse("attention_block_length", block, "0 (full attention) or a block length > 0")
    if not isinstance(d["n_heads"], int) or d["n_heads"] < 1 or d["d_model"] % d["n_heads"]:
        raise refuse("n_heads", d["n_heads"], f"must divide d_model={d['d_model']}")


def _effective_kv_heads(d: dict[str, Any]) -> int:
    """Key/value heads as the official config resolves ``n_kv_heads`` and ``multi_query_attention``."""
    n_kv, mqa, n_heads = d["n_kv_heads"], d["multi_query_attention"], d["n_heads"]
    if n_kv is None:
        return 1 if mqa is True else int(n_heads)
    if mqa is None or n_kv == (1 if mqa else n_heads):
        if n_kv < 1 or n_heads % n_kv:
            raise refuse("n_kv_heads", n_kv, f"must divide n_heads={n_heads}")
        return int(n_kv)
    raise refuse("multi_query_attention", mqa, f"contradicts n_kv_heads={n_kv}")


class RMSNorm(nn.Module):
    """RMS norm in float32, cast back, then the affine part: ``w * x (+ b)``, or ``x * (1 + w)`` for
    Gemma's variant; no parameters without ``affine``."""

    def __init__(self, dim: int, eps: float, affine: bool = True, bias: bool = False, gemma: bool = False):
        super().__init__()
        self.eps, self.gemma = eps, gemma
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = rms_normalize(x, self.eps)
        if self.weight is None:
            return y
        y = y * (1 + self.weight.to(dtype)) if self.gemma else y * self.weight.to(dtype)
        return y if self.bias is None else y + self.bias.to(dtype)


def make_norm(cfg: LLaDAConfig) -> nn.Module:
    """The norm ``layer_norm_type`` names, as the official code builds it (``default``: torch's
    LayerNorm with eps 1e-5 whatever rms_norm_eps says)."""
    affine, bias = cfg.layer_norm_with_affine, cfg.norm_bias
    if cfg.layer_norm_type in ("default", "low_precision"):
        return nn.LayerNorm(cfg.d_model, eps=1e-5, elementwise_affine=affine, bias=affine and bias)
    return RMSNorm(cfg.d_model, cfg.rms_norm_eps, affine, bias, gemma=cfg.layer_norm_type == "gemma_rms")


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, 1, T, Dh] for the "rotate half" convention, in float32."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, Dh/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, Dh]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, h, hk = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
        self.n_heads, self.n_kv_heads, self.head_dim = h, hk, d // h
        self.theta = cfg.rope_theta
        qkv_bias = cfg.include_bias or cfg.include_qkv_bias
        self.attn_norm = make_norm(cfg)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, hk * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, hk * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=cfg.include_bias)
        self.ff_norm = make_norm(cfg)
        self.act = ACTIVATION_FNS[cfg.activation_type]
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=cfg.include_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None,
                kv: KV | None = None):
        """x [B, W, D] -> [B, W, D]. ``kv`` (the cache's update for this layer) takes this forward's
        keys and values [B, Hk, W, Dh] and returns the ones to attend to [B, Hk, T, Dh]."""
        b, t, _ = x.shape
        n = self.attn_norm(x)
        q = self.q_proj(n).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(n).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hk, T, Dh]
        v = self.v_proj(n).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        h = x + self.attn_out(attend(q, k, v, key_mask, kv))
        return h + swiglu(self.ff_norm(h), self.ff_proj, self.up_proj, self.ff_out, self.act)


class _Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.embedding_size, cfg.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = make_norm(cfg)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(cfg.d_model, cfg.embedding_size, bias=cfg.include_bias)


class _Inner(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.transformer = _Transformer(cfg)


class LLaDAModel(nn.Module):
    """Bidirectional transformer; ``module(input_ids=..., attention_mask=...).logits`` [B, T, V].

    ``logits[:, i]`` predicts position i; ``logits_positions`` (a slice) restricts the output head
    to those positions (the decode loop asks for the active block only). Positions come from the
    attention mask (count of real tokens before each position), so a left-padded row is computed as
    if it stood alone.

    With a ``cache`` (:mod:`fewstep.models.kvcache`) a forward stores every layer's keys and
    values; with a ``window`` as well, the input is the window's tokens only and attention reads the
    other positions from the cache.
    """

    supports_logits_positions = True
    supports_cache = True

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.model = _Inner(cfg)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.transformer.wte

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
        tr = self.model.transformer
        x = tr.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [B, W, D]
        if self.config.input_emb_norm:
            x = x * self.config.d_model**0.5
        # mask [B, 1, 1, T] of the real keys (block-causal: [B, 1, W, T]) and positions [B, W]
        mask, position_ids = attention_inputs(x, attention_mask, position_ids, window, cache,
                                              self.config.attention_block_length)
        rope = rotary(position_ids, self.config.d_model // self.config.n_heads, self.config.rope_theta)
        x = run_layers(tr.blocks, x, rope, mask, cache, cache_rows, window)
        tied = self.config.weight_tying
        logits = output_head(x, logits_positions, tr.ln_f, tr.wte.weight if tied else tr.ff_out.weight,
                             None if tied else tr.ff_out.bias)
        if self.config.scale_logits:
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return DiffusionLMOutput(logits=logits)

    def num_parameters(self) -> int:
        return num_parameters(self)
