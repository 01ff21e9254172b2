"""Lean batched greedy decoding for Llama-family causal drafters, without transformers' ``generate``.

A drafter is tiny (``tiny-ar``: 0.76M parameters): ``generate()`` pays its general machinery (cache
objects, attention-mask building, stopping criteria) at every token, and runs every row until the
last one stops. :func:`greedy` runs the same greedy decode with its own small forward
over the module's weights:

- embedding; per layer RMSNorm, q/k/v projections (the module's own ``nn.Linear`` layers, biases
  included: Qwen2), per-head ``q_norm`` / ``k_norm`` where the layer has them (Qwen3), rotary
  embedding with cos/sin from the module's own rotary embedding (any rope scaling it applies),
  attention (two batched products, grouped keys as ``repeat_kv``), ``o_proj``, RMSNorm
  and the SiLU-gated MLP; final norm and ``lm_head``;
- a key/value cache preallocated per layer as [B, H_kv, T_max, D] and written in place;
- left-padded prompts as transformers reads them: position ids ``cumsum(attention) - 1``, padding
  keys masked for every query; the prompt is one forward (prefill; its last layer runs queries and
  MLP on the last position only), then one token per step;
- greedy choice on the float32 logits (as ``generate`` does), with the probability of each chosen
  token; a row that emits one of ``stops`` emits ``pad_id`` from then on, and once a quarter of the
  rows decoding have stopped they leave the forwards (:func:`_compact`); the loop ends when every
  row has stopped or the budget is spent.

Supported (:func:`supports`): ``model_type`` ``llama``, ``qwen2``, ``qwen3`` with ``hidden_act``
``silu``, full attention on every layer (no sliding-window layers) and transformers' usual module
layout (``model.embed_tokens``, ``model.layers``, ``model.norm``, ``model.rotary_emb``,
``lm_head``). Every other architecture (GPT-2, Phi, Gemma, Mistral, mixtures of experts, sliding
windows, ...) is not: the drafter falls back to ``generate()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2", "qwen3")
_LAYER_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True)
class Greedy:
    tokens: torch.Tensor  # [B, n] chosen token ids (pad_id after a row's stop), on the model's device
    probs: torch.Tensor  # [B, n] float32 probability of each chosen token under the float32 logits


@dataclass
class _Cache:
    """The rows still decoding (A of the B) and their keys/values. Cache slot ``s`` holds sequence
    slot ``s + offset``: :func:`_compact` drops stopped rows and the leading slots that are padding
    in every row left."""

    keys: list[torch.Tensor]  # per layer [A, H_kv, T, D], written in place
    values: list[torch.Tensor]  # per layer [A, H_kv, T, D], written in place
    bias: torch.Tensor  # [A, T] additive key mask: -inf at left padding, 0 at every other slot
    rows: torch.Tensor  # [A] the batch row of each
    lengths: torch.Tensor  # [A, 1] real prompt tokens of each
    done: torch.Tensor  # [A] bool: stopped (emits padding until dropped)
    offset: int = 0


def _has(obj: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def supports(module: Any) -> bool:
    """Whether :func:`greedy` decodes ``module`` exactly (else use ``generate()``; see the module doc)."""
    cfg = getattr(module, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED or getattr(cfg, "hidden_act", None) != "silu":
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    inner: Any = getattr(module, "model", None)
    if not all(_has(inner, p) for p in ("embed_tokens", "layers", "norm", "rotary_emb")) or not _has(module, "lm_head"):
        return False
    return all(_has(layer, p) for layer in inner.layers for p in _LAYER_PARTS)


def _linear(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """``layer(x)``; a plain ``nn.Linear`` is applied as ``F.linear`` (the same op, without the module call)."""
    if type(layer) is torch.nn.Linear:
        return F.linear(x, layer.weight, layer.bias)
    return layer(x)


def _rms_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    """transformers' Llama/Qwen RMSNorm, op for op (float32 statistics, weight applied in the input dtype)."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        return norm(x)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _heads(x: torch.Tensor, head_dim: int, norm: Any) -> torch.Tensor:
    """[B, T, H * D] -> [B, H, T, D], per-head RMSNorm first where the layer has one (Qwen3)."""
    b, t, _ = x.shape
    x = x.view(b, t, -1, head_dim)  # [B, T, H, D]
    if norm is not None:
        x = _rms_norm(x, norm)
    return x.transpose(1, 2)


def _attention(attn: Any, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: _Cache, layer: int,
               start: int, mask: torch.Tensor, last_only: bool) -> torch.Tensor:
    """Self-attention of x [A, T, d] (normed) at cache slots [start, start + T); writes their keys and
    values in place. ``last_only``: only the last position's output [A, 1, d] (else [A, T, d])."""
    cos, sin = rope  # [A, 1, T, D]
    d = attn.head_dim
    k = _heads(_linear(x, attn.k_proj), d, getattr(attn, "k_norm", None))  # [A, H_kv, T, D]
    v = _heads(_linear(x, attn.v_proj), d, None)  # [A, H_kv, T, D]
    stop = start + x.shape[1]
    cache.keys[layer][:, :, start:stop] = k * cos + _rotate_half(k) * sin
    cache.values[layer][:, :, start:stop] = v
    if last_only:
        x, cos, sin, mask = x[:, -1:], cos[:, :, -1:], sin[:, :, -1:], mask[:, :, -1:]
    q = _heads(_linear(x, attn.q_proj), d, getattr(attn, "q_norm", None))  # [A, H, T', D]
    q = q * cos + _rotate_half(q) * sin
    keys, values = cache.keys[layer][:, :, :stop], cache.values[layer][:, :, :stop]  # [A, H_kv, S, D]
    out = _attend(q, keys, values, mask, attn.scaling)  # [A, H, T', D]
    return _linear(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), attn.o_proj)  # [A, T', d]


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v: q [A, H, T, D], keys/values [A, H_kv, S, D] (query head i reads
    key head i // (H / H_kv), as transformers' ``repeat_kv``), additive mask [A, 1, T, S].

    Two batched matrix products rather than ``scaled_dot_product_attention``: with one query per row
    (every step after the prompt) its CPU kernel costs several times more than the products."""
    a, h, t, d = q.shape
    g = h // keys.shape[1]  # query heads per key head
    qg = q.reshape(a, keys.shape[1], g * t, d)  # [A, H_kv, g*T, D] (head i = kv head i // g, then its T rows)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * scale + (mask.repeat(1, 1, g, 1) if g > 1 else mask)
    out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), values)  # [A, H_kv, g*T, D]
    return out.reshape(a, h, t, d)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    return _linear(F.silu(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)


def _forward(module: Any, ids: torch.Tensor, positions: torch.Tensor, cache: _Cache, start: int,
             mask: torch.Tensor) -> torch.Tensor:
    """Float32 logits [A, V] after the last of ``ids`` [A, T] (positions [A, T], cache slots from
    ``start``, additive mask [A, 1, T, S]). The last layer runs its queries and MLP on the last
    position only: nothing reads the others'."""
    inner = module.model
    h = inner.embed_tokens(ids)  # [A, T, d]
    cos, sin = inner.rotary_emb(h, positions)  # [A, T, D] each
    rope = (cos.unsqueeze(1), sin.unsqueeze(1))  # [A, 1, T, D]
    last = len(inner.layers) - 1
    for i, layer in enumerate(inner.layers):
        out = _attention(layer.self_attn, _rms_norm(h, layer.input_layernorm), rope, cache, i, start, mask, i == last)
        h = (h[:, -1:] if i == last else h) + out
        h = h + _mlp(layer.mlp, _rms_norm(h, layer.post_attention_layernorm))
    return _linear(_rms_norm(h, inner.norm), module.lm_head)[:, -1].float()  # [A, V]


def _new_cache(module: Any, att: torch.Tensor, t_max: int) -> _Cache:
    """Empty keys/values of T_max slots for every layer and row; -inf bias at the left padding."""
    cfg, inner = module.config, module.model
    b, p = att.shape
    ref = inner.embed_tokens.weight
    shape = (b, cfg.num_key_value_heads or cfg.num_attention_heads, t_max, inner.layers[0].self_attn.head_dim)
    keys = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in inner.layers]
    values = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in inner.layers]
    bias = torch.zeros(b, t_max, dtype=ref.dtype, device=ref.device)
    bias[:, :p].masked_fill_(att == 0, float("-inf"))
    rows = torch.arange(b, device=ref.device)
    return _Cache(keys, values, bias, rows, att.sum(-1, keepdim=True), torch.zeros(b, dtype=torch.bool,
                                                                                    device=ref.device))


def _compact(cache: _Cache, p: int) -> _Cache:
    """The rows not yet done, without the leading slots that are padding in all of them (a copy)."""
    keep = (~cache.done).nonzero()[:, 0]  # [A']
    lengths = cache.lengths[keep]  # [A', 1]
    cut = max(p - cache.offset - int(lengths.max()), 0)  # slots before every kept row's prompt
    return _Cache([k[keep, :, cut:] for k in cache.keys], [v[keep, :, cut:] for v in cache.values],
                  cache.bias[keep, cut:], cache.rows[keep], lengths, cache.done[keep], cache.offset + cut)


def _prefill_mask(att: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, P, P] additive mask of the prompt: causal over real keys; a padding query sees itself
    only (its output is never read, and a query with no key at all would give NaN)."""
    p = att.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=att.device).tril()  # [P, P]
    eye = torch.eye(p, dtype=torch.bool, device=att.device)
    seen = (causal & att.bool()[:, None, None, :]) | eye  # [B, 1, P, P]
    return torch.zeros(seen.shape, dtype=dtype, device=att.device).masked_fill_(~seen, float("-inf"))


def _choose(logits: torch.Tensor, done: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token [A] and its probability [A]; rows already done emit ``pad_id``."""
    token = logits.argmax(-1)  # [A]
    prob = torch.softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]  # [A]
    return torch.where(done, torch.full_like(token, pad_id), token), prob


@torch.inference_mode()
def greedy(module: Any, ids: torch.Tensor, att: torch.Tensor, max_new_tokens: int, stops: list[int],
           pad_id: int) -> Greedy:
    """Greedy decode of left-padded ``ids`` [B, P] (``att`` [B, P]: 1 on real tokens) for at most
    ``max_new_tokens`` tokens per row, on the module's device and dtype (see the module doc).
    Rows that stopped are dropped from the forwards once a quarter of the rows decoding are done."""
    device = module.model.embed_tokens.weight.device
    ids, att = ids.to(device), att.to(device)
    b, p = ids.shape
    cache = _new_cache(module, att, p + max_new_tokens)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    tokens = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [B, N]
    probs = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=device)  # [B, N]
    positions = (att.cumsum(-1) - 1).masked_fill(att == 0, 1)  # [B, P]
    logits = _forward(module, ids, positions, cache, 0, _prefill_mask(att, cache.bias.dtype))  # [B, V]
    n = 0
    while n < max_new_tokens:
        chosen, prob = _choose(logits, cache.done, pad_id)  # [A] each
        tokens[cache.rows, n], probs[cache.rows, n] = chosen, prob
        cache.done |= torch.isin(chosen, stop_ids)
        n += 1
        alive = int((~cache.done).sum())
        if n == max_new_tokens or alive == 0:
            break
        if alive <= 0.75 * len(cache.rows):
            chosen = chosen[~cache.done]
            cache = _compact(cache, p)
        start = p + n - 1 - cache.offset  # the cache slot of the token just chosen
        mask = cache.bias[:, None, None, : start + 1]  # [A, 1, 1, S]
        logits = _forward(module, chosen[:, None], cache.lengths + (n - 1), cache, start, mask)
    return Greedy(tokens[:, :n], probs[:, :n])
