"""``fewstep.generate``: prompts in, one :class:`GenerationResult` per prompt out.

Diffusion models run the decode loop (:func:`fewstep.decoding.loop.decode`) to its last event;
causal models (strategy ``ar``) decode greedily with transformers' ``generate``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from fewstep.config import DecodeConfig
from fewstep.decoding.loop import StepEvent, check_prompts, decode, left_pad
from fewstep.decoding.result import GenerationResult
from fewstep.errors import ConfigError
from fewstep.models.adapter import CausalModel, DiffusionModel


def _tokenise(model, prompts: str | Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    return [model.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]


def results_from_event(model: DiffusionModel, event: StepEvent, warm=None) -> list[GenerationResult]:
    out = []
    counts = {k: v.tolist() for k, v in (event.counts or {}).items()}
    for i, (row, nfe, at) in enumerate(zip(event.canvas.tolist(), event.nfe.tolist(), event.committed_at.tolist())):
        extra: dict[str, Any] = {k: counts[k][i] for k in ("injected", "confirmed", "revoked") if k in counts}
        if warm is not None:
            extra.update(drafter_nfe=warm.drafter_nfe[i], drafter_s=warm.drafter_s[i])
        out.append(GenerationResult(row, model.decode(row), nfe, model.answer_length(row), at, **extra))
    return out


def generate(
    model: DiffusionModel | CausalModel,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    config: DecodeConfig | None = None,
) -> list[GenerationResult]:
    """Decode each prompt (text, or token ids) with ``config``; results in prompt order."""
    cfg = config or DecodeConfig()
    batch = _tokenise(model, prompts)
    if not batch:
        return []
    if isinstance(model, CausalModel):
        if cfg.strategy != "ar":
            raise ConfigError(f"{model.name} is a causal model: use strategy 'ar', not {cfg.strategy!r}")
        return generate_ar(model, batch, cfg.gen_length)
    warm = None
    with torch.no_grad():
        if cfg.drafter:
            warm = warm_start_for(model, prompts, cfg)
        last = deque(decode(model, batch, cfg, init=warm.init if warm else None, snapshots=False), maxlen=1)[0]
    assert last.done
    return results_from_event(model, last, warm)


def warm_start_for(model: DiffusionModel, prompts, cfg: DecodeConfig):
    """The drafter's answers as the initial canvas (:mod:`fewstep.drafting`); needs text prompts."""
    from fewstep.drafting.warmstart import warm_start

    if isinstance(prompts, str):
        prompts = [prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise ConfigError("a drafter needs the prompts as text (its tokenizer is not the diffusion model's)")
    return warm_start(model, list(prompts), cfg)


@torch.no_grad()
def generate_ar(model: CausalModel, batch: list[list[int]], max_new_tokens: int) -> list[GenerationResult]:
    """Greedy decoding of a causal LM over a left-padded batch. NFE per row counts the forwards
    that row needed: one per generated token up to and including its EOS."""
    check_prompts(model, batch, max_new_tokens)
    ids, att, p = left_pad(batch, model.pad_id)
    module: Any = model.module  # a transformers PreTrainedModel
    out = module.generate(
        input_ids=ids.to(model.device),
        attention_mask=att.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list({model.eos_id, *model.stop_ids}),
        pad_token_id=model.pad_id,
    )[:, p:].cpu()
    results = []
    for row in out.tolist():
        n = model.answer_length(row)
        nfe = min(n + 1, len(row))
        results.append(GenerationResult(row[:nfe], model.decode(row), nfe, n))
    return results
