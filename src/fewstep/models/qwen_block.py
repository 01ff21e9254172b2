"""Qwen decoder layers run as a block diffusion model: the shared module of SDAR
(:mod:`fewstep.models.sdar`, Qwen3 layers) and Fast-dLLM v2 (:mod:`fewstep.models.fast_dllm_v2`, Qwen2.5
layers), written from the published modelling code's equations.

Parameter names are those of the published checkpoints (and of transformers' Qwen2 / Qwen3):
``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (and, with query/key norms,
``self_attn.{q,k}_norm``), ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.{input_layernorm,post_attention_layernorm}``, ``model.norm``, ``lm_head`` (absent
when tied to the embeddings).

Per layer: ``h = x + o_proj(Attn(input_layernorm(x)))``, ``out = h + down(act(gate(m)) * up(m))`` with
``m = post_attention_layernorm(h)``. RMSNorm ``w * (x / rms(x))`` computed in float32 and cast back
before the weight. Attention: H query and Hk key/value heads of ``head_dim``; with query/key norms
(SDAR) an RMSNorm over the head dimension of each head before rotary; rotary embedding on the whole
head ("rotate half", inverse frequencies ``theta^(-2j/head_dim)``, angles in float32); scale
``1/sqrt(head_dim)``; block-causal mask: a query attends to keys whose attention block (blocks of the
family's block size counted from the sequence start) is its own or an earlier one. The output head
gives logits in float32; which position a row of logits predicts is the family's business (SDAR:
position i; Fast-dLLM v2: position i + 1, realigned by the adapter).

Shapes: B batch, T sequence, W window, D hidden, H heads, Hk key/value heads, Dh head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.errors import ModelLoadError
from fewstep.models.configs import check_qwen_rotary, known_fields, read_qwen, refuse
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


@dataclass(frozen=True)
class QwenBlockConfig:
    """What the module computes with; each family's config class (a subclass) reads its published
    config.json into it and says which attention block and biases it has."""

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None

    # each family: (q/k/v bias, o bias, query/key norms) and its attention block length
    @property
    def qkv_bias(self) -> bool:
        raise NotImplementedError

    @property
    def o_bias(self) -> bool:
        raise NotImplementedError

    @property
    def qk_norm(self) -> bool:
        raise NotImplementedError

    @property
    def attention_block_length(self) -> int:
        raise NotImplementedError

    @classmethod
    def common_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The fields of a Qwen2 / Qwen3 config.json this class keeps, after the checks every family
        shares (:class:`ModelLoadError` naming a field whose value is not implemented)."""
        d, params = read_qwen(d)
        if d.get("head_dim") is None:
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        check_common(d, params)
        return known_fields(cls, d)


def check_common(d: dict[str, Any], params: dict[str, Any]) -> None:
    """The values of a Qwen config.json this implementation does not reproduce."""
    check_qwen_rotary(d, params, "full (block-causal) attention")
    kinds = set(d.get("layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise refuse("layer_types", sorted(kinds), "every layer full_attention")
    if d["num_attention_heads"] % d["num_key_value_heads"]:
        raise refuse("num_key_value_heads", d["num_key_value_heads"],
                     f"must divide num_attention_heads={d['num_attention_heads']}")


def positive_block(field: str, value: Any) -> int:
    """An attention block length from config.json: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise refuse(field, value, "the attention block length must be an integer >= 1")
    return value


def qwen_layer(cfg: QwenBlockConfig) -> DecoderLayer:
    attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                     qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, qk_norm=cfg.qk_norm, eps=cfg.rms_norm_eps)
    return DecoderLayer(attn, SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act), cfg.hidden_size,
                        cfg.rms_norm_eps)


class _Base(nn.Module):
    def __init__(self, cfg: QwenBlockConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(qwen_layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class QwenBlockModel(StackedLM):
    """``module(input_ids=..., attention_mask=...).logits`` [B, T, V]: the fewstep model protocol of
    :class:`fewstep.models.llada.LLaDAModel` (positions from the attention mask, so left padding
    changes nothing; ``logits_positions``; a key/value ``cache`` with ``cache_rows`` / ``window``,
    exact here since attention is block-causal, :mod:`fewstep.models.blockcausal`)."""

    def __init__(self, cfg: QwenBlockConfig):
        super().__init__(cfg, _Base(cfg))

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
        mask, position_ids = attention_inputs(x, attention_mask, position_ids, window, cache,
                                              self.config.attention_block_length)  # [B, 1, W, T], [B, W]
        rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)  # [B, 1, W, Dh]
        x = run_layers(self.model.layers, x, rope, mask, cache, cache_rows, window)
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return DiffusionLMOutput(logits=output_head(x, logits_positions, self.model.norm, head).float())


def load_directory(path, config: dict[str, Any], defaults: dict[str, Any], name: str, device, dtype,
                   trust_remote_code: bool, mask_tokens: tuple[str, ...], shifted: bool,
                   authors: dict[str, Any]):
    """A directory of a Qwen block diffusion family as a :class:`~fewstep.models.adapter.DiffusionModel`
    (fewstep's own module, no code from the directory). The mask id: the tokenizer's mask token,
    else ``mask_token_id`` in config.json, else the first of ``mask_tokens`` in the vocabulary.
    ``authors``: the published decoding settings, under the directory's own decode defaults."""
    from fewstep.models.adapter import DiffusionModel
    from fewstep.models.loading import _fallback, _native, _tokenizer

    tied = "lm_head.weight" if config.get("tie_word_embeddings") else None
    cfg, module = _native(path, config, tied, device, dtype)
    tok = _tokenizer(path, trust_remote_code, fallback=_fallback(config))
    vocab = tok.get_vocab()
    found = [vocab[t] for t in mask_tokens if t in vocab]
    mask = next((i for i in (tok.mask_token_id, cfg.mask_token_id, *found) if i is not None), None)
    if mask is None:
        raise ModelLoadError(f"{path}: no mask token (neither the tokenizer's mask_token, mask_token_id in "
                             f"config.json, nor {' / '.join(mask_tokens)} in the vocabulary)")
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.eos_token_id
    if eos is None:
        raise ModelLoadError(f"{path}: neither the tokenizer nor config.json names an EOS token")
    pad = next(i for i in (tok.pad_token_id, cfg.pad_token_id, eos) if i is not None)
    stop = tuple(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab and vocab[t] != eos)
    return DiffusionModel(module=module, tokenizer=tok, name=name, eos_id=int(eos), pad_id=int(pad),
                          max_length=cfg.max_position_embeddings, stop_ids=stop,
                          decode_defaults={**authors, **defaults}, mask_id=int(mask), shifted_logits=shifted)
