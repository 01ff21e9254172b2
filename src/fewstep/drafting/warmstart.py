"""The initial canvas of a warm start, built from drafts (the ``init`` stage of the decode loop).

- ``inject``: kept draft positions start as provisional tokens; the loop's revise stage may
  confirm or revoke them (``remask_threshold``, ``confirm_threshold``);
- ``interpolate``: the canvas stays masked and the model's input embedding at a kept position is
  ``(1 - alpha) * E[mask] + alpha * E[draft token]`` until the position is committed
  (``alpha_decay`` shrinks alpha at every step);
- kept positions: bridged draft tokens (``bridge.to_canvas``), each kept with probability ``rho``
  by a generator seeded from ``seed`` and the prompt's text (so a prompt's canvas never depends on
  the batch it is in), and, with ``draft_min_confidence`` > 0, only where the drafter's own
  probability reaches it (calibrated injection: the drafter's errors concentrate where it is unsure).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from fewstep.decoding.canvas import CanvasInit
from fewstep.drafting.bridge import to_canvas
from fewstep.drafting.drafter import default_budget, draft, drafter_dtype, load_drafter
from fewstep.models.quantize import quantization_of


@dataclass(frozen=True)
class WarmStart:
    init: CanvasInit | None  # None: nothing to start from (init=mask)
    drafter_nfe: list[int]
    drafter_s: list[float]


def keep_mask(prompt: str, seed: int, g: int, rho: float) -> torch.Tensor:
    """[G] bool: which draft positions survive injection dropout, seeded by prompt and seed."""
    if rho >= 1:
        return torch.ones(g, dtype=torch.bool)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}\0{prompt}".encode()))
    return torch.rand(g, generator=gen) < rho


def warm_start(model, prompts: list[str], cfg) -> WarmStart:
    """Draft every prompt with ``cfg.drafter`` and build the initial canvas ``cfg.init`` asks for."""
    drafter = load_drafter(cfg.drafter, device=model.device, dtype=drafter_dtype(cfg), quantize=quantization_of(model))
    budget = cfg.drafter_max_tokens or default_budget(drafter, cfg.gen_length)
    drafts = draft(drafter, prompts, budget)
    g = cfg.gen_length
    tokens = torch.full((len(prompts), g), -1, dtype=torch.long)
    for i, (prompt, d) in enumerate(zip(prompts, drafts)):  # tokenizer work per row: not a tensor hot path
        bridged = to_canvas(d, drafter.tokenizer, model.tokenizer, g, model.eos_id)
        row = torch.tensor(bridged.tokens, dtype=torch.long)
        keep = (row >= 0) & keep_mask(prompt, cfg.seed, g, cfg.rho)
        if cfg.draft_min_confidence > 0:
            keep &= torch.tensor(bridged.probs, dtype=torch.float64) >= cfg.draft_min_confidence
        tokens[i] = torch.where(keep, row, -1)
    nfe, secs = [d.nfe for d in drafts], [d.seconds for d in drafts]
    if cfg.init == "inject":
        return WarmStart(CanvasInit(tokens=tokens), nfe, secs)
    if cfg.init == "interpolate":
        kept = tokens >= 0
        emb = model.embed(tokens.clamp(min=0).to(model.device)).detach()
        return WarmStart(CanvasInit(embeds=emb, embed_mask=kept, alpha=cfg.alpha, alpha_decay=cfg.alpha_decay), nfe,
                         secs)
    return WarmStart(None, nfe, secs)
