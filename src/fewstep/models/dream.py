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

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.errors import ModelLoadError
from fewstep.models.kvcache import KVCache
from fewstep.models.positions import key_mask_and_positions

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
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
        missing = [k for k in REQUIRED if d.get(k) is None]
        if missing:
            raise ModelLoadError(f"config.json lacks {', '.join(missing)}")
        d = dict(d)
        d.setdefault("num_key_value_heads", d["num_attention_heads"])
        params = d.get("rope_parameters") or {}
        if "rope_theta" not in d and "rope_theta" in params:
            d["rope_theta"] = params["rope_theta"]
        _check(d, params)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(model_type="Dream", architectures=["DreamModel"], rope_scaling=None, use_sliding_window=False,
                 attention_dropout=0.0)
        return d


def _refuse(field: str, value: Any, why: str) -> ModelLoadError:
    return ModelLoadError(f"config field {field}={value!r} is not implemented ({why})")


def _check(d: dict[str, Any], params: dict[str, Any]) -> None:
    if d.get("rope_scaling") is not None:
        raise _refuse("rope_scaling", d["rope_scaling"], "fewstep's Dream implements plain rotary embeddings only")
    if params.get("rope_type", "default") != "default":
        raise _refuse("rope_parameters.rope_type", params["rope_type"], "only the default rotary embedding")
    if d.get("use_sliding_window"):
        raise _refuse("use_sliding_window", d["use_sliding_window"], "full attention only")
    if d.get("hidden_act", "silu") not in ACTIVATIONS:
        raise _refuse("hidden_act", d["hidden_act"], "choose one of " + ", ".join(ACTIVATIONS))
    if d["hidden_size"] % d["num_attention_heads"] or d["num_attention_heads"] % d["num_key_value_heads"]:
        raise _refuse("num_attention_heads", d["num_attention_heads"],
                      "must divide hidden_size and be a multiple of num_key_value_heads")
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != d["hidden_size"] // d["num_attention_heads"]:
        raise _refuse("head_dim", head_dim, "Dream's head dim is hidden_size / num_attention_heads")
    for name in ("attention_bias", "mlp_bias"):  # Qwen2 keys: Dream's q/k/v have a bias, nothing else
        if name in d and d[name] not in (None, name == "attention_bias"):
            raise _refuse(name, d[name], "Dream's layout has q/k/v biases only")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, T, Dh]: angles in float32 (``[freqs, freqs]``), the tables cast to ``dtype``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, Dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class DreamAttention(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        d, dh = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, dh
        self.q_proj = nn.Linear(d, self.n_heads * dh, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv * dh, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv * dh, bias=True)
        self.o_proj = nn.Linear(self.n_heads * dh, d, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None,
                kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """x [B, W, D] -> [B, W, D]; ``kv`` (the cache's update for this layer) maps the window's keys
        and values [B, Hk, W, Dh] to the ones attended to [B, Hk, T, Dh]."""
        b, w, _ = x.shape
        q = self.q_proj(x).view(b, w, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, W, Dh]
        k = self.k_proj(x).view(b, w, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hk, W, Dh]
        v = self.v_proj(x).view(b, w, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = rotate(q, *rope), rotate(k, *rope)
        if kv is not None:
            k, v = kv(k, v)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # scale 1/sqrt(Dh)
        return self.o_proj(a.transpose(1, 2).reshape(b, w, -1))


class DreamMLP(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(cfg)
        self.mlp = DreamMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, key_mask, kv=None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, key_mask, kv)
        return h + self.mlp(self.post_attention_layernorm(h))


class _DreamBase(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class DreamOutput:
    logits: torch.Tensor


class DreamModel(nn.Module):
    """``module(input_ids=..., attention_mask=...).logits`` [B, T, V], unshifted as Dream computes
    them (``logits[:, i]`` predicts position i + 1). The same model protocol as
    :class:`~fewstep.models.llada.LLaDAModel`: ``logits_positions`` (a slice of output rows),
    positions from the attention mask (left padding computes a row as if it stood alone), and a
    key/value ``cache`` with ``cache_rows`` and ``window`` (:mod:`fewstep.models.kvcache`)."""

    supports_logits_positions = True
    supports_cache = True

    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.config = cfg
        self.model = _DreamBase(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

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
    ) -> DreamOutput:
        """input_ids / inputs_embeds [B, W] (W = T, or the window's length with ``window``);
        attention_mask and position_ids [B, T]; ``logits_positions`` counts from the window's start."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, W, D]
        b, w, _ = x.shape
        key_mask, position_ids = key_mask_and_positions(attention_mask, position_ids, b, w, x.device, window,
                                                        cache is not None)
        rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            kv = None if cache is None else partial(cache.update, i, rows=cache_rows, window=window)
            x = layer(x, rope, key_mask, kv)
        if logits_positions is not None:
            x = x[:, logits_positions]
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return DreamOutput(logits=F.linear(x, head))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
