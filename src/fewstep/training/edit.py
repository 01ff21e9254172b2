"""The ``edit`` objective of ``fewstep distill``: teach a masked diffusion model to judge visible tokens.

A masked diffusion model is trained on masked positions only; every visible token it ever sees in
training is correct, so its output at a visible position is no judgement of that token. This
objective shows it wrong visible tokens and asks for the right one (the corruption of LLaDA 2.1's
token-to-token editing and DiffusionGemma's uniform noise, and the on-policy errors of DMax):

- each row of a step draws a **source** for its visible answer tokens (fractions ``edit_random``,
  ``edit_self``, ``edit_drafter``; the other rows are clean): clean (the reference), ``random``
  (each visible token replaced, with a probability drawn per row from U(0, ``edit_rate``), by a
  uniformly drawn vocabulary token), ``self`` (the answer the model itself decodes now with
  llada in ``edit_self_steps`` steps: its own errors, regenerated as it trains) or ``drafter``
  (``edit_drafter_name``'s greedy draft, bridged into the canvas exactly as a warm start builds it);
- each row masks a fraction t of its answer positions (t ~ U(eps, 1)); a corrupted row is fully
  visible (t = 0) with probability ``edit_visible``: the canvas a warm start's first forward sees;
- the loss is cross-entropy against the reference at every answer position: at a masked position
  (the diffusion objective, weighted 1/t as LLaDA's: a clean row's loss is exactly the masked
  diffusion loss, which keeps the model's own decoding intact), at a replaced one ("this token is
  wrong: write the right one") and at a clean visible one of a corrupted row ("keep it"), the
  visible ones weighted ``edit_visible_weight`` (a clean row's visible tokens carry no loss: its
  loss is LLaDA's), normalised by the step's answer positions over every process;
- the alignment variant (``edit_interpolate`` > 0): that fraction of the drafter rows is not
  judged; it is a clean row (the reference at visible positions, masked with ratio t, LLaDA's
  loss) whose masked positions with a draft token get the input embedding
  ``(1 - a) E[mask] + a E[draft]`` with a ~ U(0, 1) per row: the canvas ``init=interpolate``
  decodes from (visible tokens are the model's own commitments, the draft only a hint).

Every random draw of a step (sources, ratios, masks, replacements) comes from the step's seeded
generator over the whole batch, so a resumed or data-parallel run sees the same corruption; the
self and drafter proposals are deterministic functions of the weights and the problems.

Shapes: B rows, G answer (generation) positions, T = prompt + G, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

CLEAN, RANDOM, SELF, DRAFTER = 0, 1, 2, 3


@dataclass
class Corruption:
    """The step's corruption of the answer region, drawn for the whole batch: [B] and [B, G]."""

    source: torch.Tensor  # [B] CLEAN / RANDOM / SELF / DRAFTER
    masked: torch.Tensor  # [B, G] bool: answer positions fed as the mask token
    replace: torch.Tensor  # [B, G] bool: random rows' visible positions that take random_ids
    random_ids: torch.Tensor  # [B, G] the random tokens
    interpolate: torch.Tensor  # [B] bool: drafter rows fed interpolated embeddings at masked draft positions
    alpha: torch.Tensor  # [B] their interpolation weight
    t: torch.Tensor | None = None  # [B] each row's mask ratio (0: fully visible)


def draw(cfg, b: int, g: int, vocab: torch.Tensor, gen: torch.Generator, eps: float = 1e-3) -> Corruption:
    """The corruption of a ``b``-row step (``vocab`` [K]: the token ids random replacement draws from)."""
    u = torch.rand(b, generator=gen)
    edges = torch.tensor([cfg.edit_random, cfg.edit_random + cfg.edit_self,
                          cfg.edit_random + cfg.edit_self + cfg.edit_drafter])
    source = torch.bucketize(u, edges, right=True)  # [B] 0 random, 1 self, 2 drafter, 3 clean
    source = torch.tensor([RANDOM, SELF, DRAFTER, CLEAN])[source]
    t = torch.rand(b, generator=gen) * (1 - eps) + eps  # [B]
    visible = (source != CLEAN) & (torch.rand(b, generator=gen) < cfg.edit_visible)
    u_mask = torch.rand((b, g), generator=gen)  # [B, G]
    rate = torch.rand(b, generator=gen) * cfg.edit_rate  # [B]
    u_replace = torch.rand((b, g), generator=gen)  # [B, G]
    random_ids = vocab[torch.randint(len(vocab), (b, g), generator=gen)]
    interpolate = (source == DRAFTER) & (torch.rand(b, generator=gen) < cfg.edit_interpolate)
    alpha = torch.rand(b, generator=gen)
    t = torch.where(visible & ~interpolate, torch.zeros_like(t), t)  # interpolating rows keep their masks
    masked = u_mask < t[:, None]  # [B, G]
    replace = (source == RANDOM)[:, None] & ~masked & (u_replace < rate[:, None])
    return Corruption(source, masked, replace, random_ids, interpolate, alpha, t)


def replaceable_ids(vocab_size: int, special: set[int]) -> torch.Tensor:
    """[K] the ids random replacement may write: every id but the special ones (mask, padding, ...)."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in special if 0 <= i < vocab_size]] = False
    return keep.nonzero().squeeze(1)


def judging(c: Corruption, rows: torch.Tensor) -> torch.Tensor:
    """[b] rows whose visible tokens are corrupted (and judged): every source but clean and the
    interpolating drafter rows (those show the reference and hint the draft at masked positions)."""
    return (c.source[rows] != CLEAN) & ~c.interpolate[rows]


def proposal(clean: torch.Tensor, c: Corruption, rows: torch.Tensor, self_ids: torch.Tensor | None,
             draft_ids: torch.Tensor | None) -> torch.Tensor:
    """The visible answer tokens of ``rows`` before masking: clean [b, G] with each judged row's
    source written in (``self_ids`` / ``draft_ids`` [b, G], -1 where the source proposes nothing:
    the reference stays there but the position is masked, see :func:`unproposed`)."""
    src = torch.where(judging(c, rows), c.source[rows], CLEAN)[:, None]  # [b, 1]
    out = torch.where(c.replace[rows], c.random_ids[rows], clean)
    for kind, ids in ((SELF, self_ids), (DRAFTER, draft_ids)):
        if ids is not None:
            out = torch.where((src == kind) & (ids >= 0), ids, out)
    return out


def unproposed(c: Corruption, rows: torch.Tensor, draft_ids: torch.Tensor | None) -> torch.Tensor:
    """[b, G] judged drafter-row positions the draft leaves empty: masked, as a warm start leaves them."""
    if draft_ids is None:
        return torch.zeros_like(c.masked[rows])
    return ((c.source[rows] == DRAFTER) & ~c.interpolate[rows])[:, None] & (draft_ids < 0)


def inputs(ids: torch.Tensor, g: int, answer: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """ids [b, T] with the answer region (last ``g`` positions) set to ``answer`` [b, G], masked where ``masked``."""
    x = ids.clone()
    x[:, -g:] = answer.masked_fill(masked, mask_id)
    return x


def interpolated_embeds(embed, x: torch.Tensor, g: int, draft_ids: torch.Tensor, masked: torch.Tensor,
                        c: Corruption, rows: torch.Tensor) -> torch.Tensor | None:
    """Input embeddings [b, T, D] of ``x`` with masked draft positions of the interpolating rows mixed
    toward the draft token, or None when no row of the micro-batch interpolates."""
    on = c.interpolate[rows][:, None] & masked & (draft_ids >= 0)  # [b, G]
    if not bool(on.any()):
        return None
    emb = embed(x)  # [b, T, D]
    a = c.alpha[rows].to(emb.dtype)[:, None, None]  # [b, 1, 1]
    target = embed(draft_ids.clamp(min=0))  # [b, G, D]
    mixed = (1 - a) * emb[:, -g:] + a * target
    emb[:, -g:] = torch.where(on[..., None], mixed, emb[:, -g:])
    return emb


def weights(masked: torch.Tensor, drawn: torch.Tensor, t: torch.Tensor, corrupted: torch.Tensor,
            visible_weight: float, inverse_t: bool) -> torch.Tensor:
    """[b, G] the loss weight of each answer position: a position masked by the row's draw
    (``drawn`` [b, G], ratio ``t`` [b]) weighs 1/t (the diffusion objective's weight) or 1
    (``inverse_t`` False); any other masked position (one a draft left empty: ``masked`` [b, G] but
    not drawn) weighs 1; a visible one ``visible_weight`` in a corrupted row (``corrupted`` [b]) and
    0 in a clean one, whose loss is then exactly LLaDA's masked diffusion loss. (A loss on the
    visible tokens of clean rows, "copy what you see", cost the model 4 to 8 points of its own
    accuracy on arith-val within 100 steps, where plain masked diffusion at the same settings
    kept it.)"""
    inv = (1.0 / torch.where(t > 0, t, 1.0))[:, None].expand_as(drawn)
    w = torch.where(drawn & inverse_t, inv, torch.ones(drawn.shape))
    seen = torch.where(corrupted[:, None], visible_weight, 0.0).expand_as(drawn)
    return torch.where(masked, w, seen)


def token_loss(logits: torch.Tensor, clean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """logits [b, G, V], clean [b, G], w [b, G] -> the weighted cross-entropy sum (a scalar)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), clean.flatten(), reduction="none")  # [b*G]
    return (ce * w.flatten()).sum()


@dataclass
class Judged:
    """Validation statistics of visible tokens: the model's probability of each visible token and
    whether it was right (for the AUROC of the judge)."""

    prob: list[float]
    right: list[bool]


def visible_probs(logits: torch.Tensor, shown: torch.Tensor, clean: torch.Tensor, visible: torch.Tensor) -> Judged:
    """The model's probability [n] of each visible token ``shown`` [b, G] where ``visible`` [b, G]."""
    p = torch.softmax(logits.float(), -1).gather(-1, shown[..., None]).squeeze(-1)  # [b, G]
    return Judged(p[visible].tolist(), (shown == clean)[visible].tolist())


def self_proposals(adapter: Any, prompts: list[list[int]], g: int, steps: int) -> torch.Tensor:
    """[b, G] the answers ``adapter`` decodes now for ``prompts`` with llada in ``steps`` steps (greedy)."""
    from fewstep.config import DecodeConfig
    from fewstep.decoding.loop import decode

    cfg = DecodeConfig(strategy="llada", gen_length=g, block_length=g, steps=steps)
    was_training = adapter.module.training
    adapter.module.eval()
    try:
        with torch.no_grad():
            *_, last = decode(adapter, prompts, cfg, snapshots=False)
    finally:
        adapter.module.train(was_training)
    return last.canvas


def draft_proposals(adapter: Any, drafter: str, questions: list[str], g: int) -> torch.Tensor:
    """[b, G] ``drafter``'s greedy drafts of ``questions`` bridged into ``adapter``'s canvas (-1: none)."""
    from fewstep.config import DecodeConfig
    from fewstep.drafting.warmstart import warm_start

    cfg = DecodeConfig(gen_length=g, block_length=g, steps=g, drafter=drafter, init="inject")
    init = warm_start(adapter, questions, cfg).init
    assert init is not None and init.tokens is not None
    return init.tokens.cpu()
