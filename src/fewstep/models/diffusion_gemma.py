"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``) behind fewstep's model interface.

DiffusionGemma is a *uniform-state* block diffusion model: a causal encoder reads the prefix (the
prompt and the finished blocks) into a key/value cache, and a bidirectional decoder denoises a
canvas of ``canvas_length`` tokens after it. Undecided canvas positions hold tokens (random ones
at the start), not masks, so the model has no mask token; every decoder step also reads the
previous step's processed logits (*self-conditioning*). transformers implements the model: it
loads through transformers' own classes, never through code from the directory.

:class:`DiffusionGemmaModel` is a :class:`~fewstep.models.adapter.DiffusionModel` of kind
``"uniform"`` (decoded by the strategies of that kind, :mod:`fewstep.strategies.uniform_eb`) whose
:meth:`~DiffusionGemmaModel.logits` returns the decoder's logits for a window of the sequence: the
positions before the window are the encoder's prefix. Positions count real tokens only (left
padding moves no position), so a row's logits never depend on the batch it is in; the encoder's
cache of the last prefix is kept while the prefix stays the same (the steps of a block).

Shapes: b rows, T sequence, L window (canvas) length, V vocabulary.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ConfigError, ModelLoadError
from fewstep.models.adapter import DiffusionModel
from fewstep.models.kvcache import KVCache

UNIFORM = "uniform"  # the model kind: undecided positions hold tokens, every visible token is judged


@dataclass
class _Prefix:
    """The encoder's cache of the prefixes ``ids`` [B0, P] (attention ``att``): transformers' cache."""

    ids: torch.Tensor
    att: torch.Tensor
    cache: Any

    def rows_of(self, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor | None:
        """[b] the cached row each row of ``ids`` [b, P'] (P' >= P) extends, or None if one extends none."""
        n = self.ids.shape[1]
        if ids.shape[1] < n:
            return None
        same = (ids[:, None, :n] == self.ids[None]).all(-1) & (att[:, None, :n] == self.att[None]).all(-1)  # [b, B0]
        if not bool(same.any(1).all()):
            return None
        return same.long().argmax(1)

    def select(self, rows: torch.Tensor) -> Any:
        """The cache of the cached rows ``rows`` [b] (the cache itself when they are all of them, in order)."""
        if rows.numel() == self.ids.shape[0] and bool((rows == torch.arange(rows.numel(), device=rows.device)).all()):
            return self.cache
        sub = copy.copy(self.cache)
        sub.layers = [copy.copy(layer) for layer in self.cache.layers]
        sub.batch_select_indices(rows)
        return sub


@dataclass
class DiffusionGemmaModel(DiffusionModel):
    """A DiffusionGemma checkpoint: ``canvas_length`` is its block length; ``logits`` takes
    ``self_conditioning`` [b, L, V] (the previous step's processed logits of the window, None at
    a block's first step)."""

    canvas_length: int = 0
    kind: str = UNIFORM
    _prefix: _Prefix | None = field(default=None, repr=False)

    def logits(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None, positions: slice | None = None,
               position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
               cache_rows: torch.Tensor | None = None, window: slice | None = None,
               self_conditioning: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [b, L, V] (float32, soft-capped as the model computes them) of the canvas
        ``input_ids[:, positions]`` after the prefix ``input_ids[:, :positions.start]``."""
        if inputs_embeds is not None or cache is not None or window is not None or position_ids is not None:
            raise ConfigError(f"{self.name} (DiffusionGemma) takes token ids only: no input embeddings, "
                              "key/value cache or position ids")
        if input_ids is None or positions is None or positions.start is None or positions.start < 1:
            raise ConfigError(f"{self.name} (DiffusionGemma) computes the logits of a canvas after a prefix: "
                              "pass the window's positions")
        att = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        with torch.no_grad():
            return self._canvas_logits(input_ids, att.long(), positions, self_conditioning)

    def _canvas_logits(self, ids: torch.Tensor, att: torch.Tensor, window: slice,
                       self_conditioning: torch.Tensor | None) -> torch.Tensor:
        module: Any = self.module
        start = window.start
        canvas = ids[:, window]
        cache = self._encode(ids[:, :start], att[:, :start])
        seen = att[:, :start].sum(1, keepdim=True)  # [b, 1] real tokens before the canvas
        positions = seen + torch.arange(canvas.shape[1], device=ids.device)  # [b, L]
        dec_att = torch.cat([att[:, :start], torch.ones_like(canvas)], dim=1).bool()
        if self_conditioning is not None:
            self_conditioning = self_conditioning.to(module.model.decoder.embed_tokens.weight.dtype)
        out = module(cache=cache, decoder_input_ids=canvas, self_conditioning_logits=self_conditioning,
                     decoder_attention_mask=dec_att, decoder_position_ids=positions)
        return out.logits.float()

    def _encode(self, prefix: torch.Tensor, att: torch.Tensor) -> Any:
        """transformers' cache of the encoder over ``prefix`` [b, P]. Where each row extends a cached
        prefix (the steps of a block; the next block), only the new tokens are encoded, appended to
        that row's cache, as transformers' ``generate`` does (prompt, then one canvas at a time)."""
        from transformers import DynamicCache

        module: Any = self.module
        positions = (att.cumsum(1) - 1).clamp(min=0)
        rows = None if self._prefix is None else self._prefix.rows_of(prefix, att)
        if rows is None:
            cache, start = DynamicCache(config=module.config.get_text_config(decoder=True)), 0
        else:
            assert self._prefix is not None
            cache, start = self._prefix.select(rows), self._prefix.ids.shape[1]
            if start == prefix.shape[1]:  # nothing new: a subset of the cached rows keeps the whole cache
                return cache
        module.model.encoder(input_ids=prefix[:, start:], attention_mask=att.bool(), cache=cache,
                             position_ids=positions[:, start:])
        self._prefix = _Prefix(prefix.clone(), att.clone(), cache)
        return cache

    def forget(self) -> None:
        """Drop the encoder's cached prefix (it holds memory between decodes)."""
        self._prefix = None


def decode_defaults(generation_config: Any, canvas_length: int) -> dict[str, Any]:
    """fewstep's decode defaults from the model's ``DiffusionGemmaGenerationConfig`` (its
    generation_config.json, or transformers' defaults): the generation is whole canvases
    (transformers' ``generate`` decodes ``ceil(max_new_tokens / canvas_length)`` of them), one
    block per canvas, EOS ends the answer without further forwards (``early_stop``), and the
    sampler's settings under fewstep's names (:mod:`fewstep.strategies.uniform_eb`)."""
    given = {k: getattr(generation_config, k, None) for k in ("max_new_tokens", "max_denoising_steps", "t_min",
                                                               "t_max", "stability_threshold", "confidence_threshold")}
    sampler = getattr(generation_config, "sampler_config", None)
    given["entropy_bound"] = getattr(sampler, "entropy_bound", None)
    from transformers import DiffusionGemmaGenerationConfig

    fallback = DiffusionGemmaGenerationConfig._get_default_generation_params()
    fallback["entropy_bound"] = fallback["sampler_config"].entropy_bound
    values = {k: v if v is not None else fallback[k] for k, v in given.items()}
    canvases = max(1, math.ceil(values.pop("max_new_tokens") / canvas_length))
    return {"gen_length": canvases * canvas_length, "block_length": canvas_length, "early_stop": True,
            **{k: float(v) if isinstance(v, float) else v for k, v in values.items()}}


def load_diffusion_gemma(path: Path, config: dict[str, Any], defaults: dict[str, Any], name: str, device,
                         dtype: torch.dtype | None, trust_remote_code: bool) -> DiffusionGemmaModel:
    """A DiffusionGemma directory through transformers' own classes (no code from the directory).
    Decode defaults: the model's generation config, under the directory's fewstep keys."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from fewstep.models.loading import _quiet_transformers, _tokenizer

    try:
        with _quiet_transformers():
            module: Any = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), dtype=dtype or torch.float32)
    except Exception as e:  # transformers raises many types for a bad directory
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelLoadError(f"cannot load {path} as DiffusionGemma: {first_line}") from None
    module = module.to(device).eval()
    text = module.config.get_text_config()
    tok = _tokenizer(path, trust_remote_code)
    gen = module.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else text.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    pad = next(int(i) for i in (gen.pad_token_id, text.pad_token_id, eos_ids[0]) if i is not None)
    canvas = int(module.config.canvas_length)
    merged = {**decode_defaults(gen, canvas), **{k: v for k, v in defaults.items() if k != "gen_length"}}
    if "gen_length" in defaults:  # max_new_tokens of generation_config.json, in whole canvases
        merged["gen_length"] = max(1, math.ceil(defaults["gen_length"] / canvas)) * canvas
    return DiffusionGemmaModel(module=module, tokenizer=tok, name=name, eos_id=eos_ids[0], pad_id=pad,
                               max_length=int(text.max_position_embeddings), stop_ids=tuple(eos_ids[1:]),
                               decode_defaults=merged, canvas_length=canvas)
