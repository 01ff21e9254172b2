"""The engine: prompts in, one result per prompt out, wired once for every consumer.

``fewstep.generate``, the CLI (``generate``, ``--stream``, ``--trace``), ``fewstep eval``,
``fewstep bench``, the lm-eval adapter and ``fewstep serve`` all decode through :func:`stream`
(or :func:`generate`, its last update). Its phases:

- **tokenise**: text prompts through the model's chat template (token ids pass as they are);
- **warm start** (``cfg.drafter``): the drafter answers every prompt; its draft becomes the initial
  canvas (:mod:`fewstep.drafting`); its forwards and seconds go into every result;
- **decode**: the decode loop (:func:`fewstep.decoding.loop.decode`) for a diffusion model, one
  :class:`Update` per step; a causal model (strategy ``ar``) decodes greedily with transformers'
  ``generate`` and yields one update;
- **results**: :meth:`Update.results` reads per-row :class:`GenerationResult` s from an update, for
  every row or for the rows a consumer asks (the server answers each row as soon as it finishes).

Gradients are off inside each step only, so a consumer's own code between updates is untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from fewstep.config import DecodeConfig
from fewstep.decoding.loop import StepEvent, decode
from fewstep.decoding.result import GenerationResult
from fewstep.decoding.state import check_prompts, left_pad
from fewstep.drafting.warmstart import WarmStart
from fewstep.errors import ConfigError
from fewstep.models.adapter import CausalModel, DiffusionModel
from fewstep.strategies import model_kind

Prompts = str | Sequence[str] | Sequence[Sequence[int]]
COUNTS = ("injected", "confirmed", "revoked", "edited")  # the revise stage's per-row counts results report


@dataclass
class Update:
    """One step of a decode. ``event`` is the loop's step (None for a causal model, whose only
    update carries its results in ``final``); ``warm`` the warm start, when there is one."""

    model: Any
    event: StepEvent | None
    warm: WarmStart | None = None
    final: list[GenerationResult] | None = None

    @property
    def done(self) -> bool:
        return self.final is not None or (self.event is not None and self.event.done)

    def injected(self) -> torch.Tensor | None:
        """[B, G] the draft token each position started with (-1: none), or None without a draft."""
        init = None if self.warm is None else self.warm.init
        return None if init is None or init.tokens is None else init.tokens

    def results(self, rows: torch.Tensor | None = None) -> list[GenerationResult]:
        """Per-row results as the update stands (``rows`` [k]: only those rows, in that order)."""
        if self.final is not None:
            return self.final if rows is None else [self.final[i] for i in rows.tolist()]
        assert self.event is not None
        return results_from_event(self.model, _event_rows(self.event, rows), _warm_rows(self.warm, rows))


def stream(model: DiffusionModel | CausalModel, prompts: Prompts, config: DecodeConfig | None = None,
           snapshots: bool = True, texts: Sequence[str] | None = None) -> Iterator[Update]:
    """Decode each prompt (text, or token ids) with ``config``, one :class:`Update` per step
    (``snapshots=False``: only the last). ``texts``: the prompts as text for the drafter, where
    ``prompts`` are token ids (default: ``prompts`` themselves)."""
    cfg = config or DecodeConfig()
    batch = tokenise(model, prompts)
    if not batch:
        return
    if isinstance(model, CausalModel) or model_kind(cfg.strategy) == "causal":
        yield Update(model, None, final=_causal(model, batch, cfg))
        return
    warm = warm_start_for(model, prompts if texts is None else texts, cfg) if cfg.drafter else None
    steps = decode(model, batch, cfg, init=warm.init if warm else None, snapshots=snapshots)
    while True:
        with torch.no_grad():
            event = next(steps, None)
        if event is None:
            return
        yield Update(model, event, warm)


def generate(model: DiffusionModel | CausalModel, prompts: Prompts,
             config: DecodeConfig | None = None) -> list[GenerationResult]:
    """Decode each prompt (text, or token ids) with ``config``; results in prompt order."""
    last = deque(stream(model, prompts, config, snapshots=False), maxlen=1)
    if not last:
        return []
    assert last[0].done
    return last[0].results()


def tokenise(model, prompts: Prompts) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    return [model.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]


def warm_start_for(model: DiffusionModel, prompts: Prompts, cfg: DecodeConfig) -> WarmStart:
    """The drafter's answers as the initial canvas (:mod:`fewstep.drafting`); needs text prompts."""
    from fewstep.drafting.warmstart import warm_start

    if isinstance(prompts, str):
        prompts = [prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise ConfigError("a drafter needs the prompts as text (its tokenizer is not the diffusion model's)")
    with torch.no_grad():
        return warm_start(model, [str(p) for p in prompts], cfg)


def results_from_event(model: DiffusionModel, event: StepEvent, warm: WarmStart | None = None
                       ) -> list[GenerationResult]:
    out = []
    counts = {k: v.tolist() for k, v in (event.counts or {}).items()}
    for i, (row, nfe, at) in enumerate(zip(event.canvas.tolist(), event.nfe.tolist(), event.committed_at.tolist())):
        extra: dict[str, Any] = {k: counts[k][i] for k in COUNTS if k in counts}
        if warm is not None:
            extra.update(drafter_nfe=warm.drafter_nfe[i], drafter_s=warm.drafter_s[i])
        out.append(GenerationResult(row, model.decode(row), nfe, model.answer_length(row), at, **extra))
    return out


def _event_rows(event: StepEvent, idx: torch.Tensor | None) -> StepEvent:
    if idx is None:
        return event
    return replace(event, canvas=event.canvas[idx], nfe=event.nfe[idx], committed_at=event.committed_at[idx],
                   counts={k: v[idx] for k, v in event.counts.items()} if event.counts else None)


def _warm_rows(warm: WarmStart | None, idx: torch.Tensor | None) -> WarmStart | None:
    if warm is None or idx is None:
        return warm
    rows = idx.tolist()
    return replace(warm, drafter_nfe=[warm.drafter_nfe[i] for i in rows], drafter_s=[warm.drafter_s[i] for i in rows])


def _causal(model, batch: list[list[int]], cfg: DecodeConfig) -> list[GenerationResult]:
    if not isinstance(model, CausalModel):
        raise ConfigError(f"strategy {cfg.strategy!r} needs a causal model; {model.name} is a diffusion model")
    if model_kind(cfg.strategy) != "causal":
        raise ConfigError(f"{model.name} is a causal model: use strategy 'ar', not {cfg.strategy!r}")
    return generate_ar(model, batch, cfg.gen_length)


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
