"""How well a diffusion model judges a drafted canvas: its probability of each visible draft token,
read in one forward, against whether that token is right.

A warm start (``init=inject``) puts the drafter's bridged tokens on the canvas as provisional
positions, and prior skepticism keeps or revokes each one by the diffusion model's probability of
it. That works only if the probability separates the draft's right tokens from its wrong ones.
This module measures it:

- :func:`draft_canvas`: the drafts of a batch of prompts bridged to the diffusion canvas, every
  draft position visible (what ``init=inject`` with ``rho=1`` builds), with the drafter's own
  probability of each token;
- :func:`judge`: one forward over the left-padded batch with that canvas, and the model's
  probability of each visible token, read as the revise stage reads it (float64 softmax, the mask
  token excluded);
- :func:`reference_tokens`: the reference solution as the diffusion tokenizer encodes it, padded
  with EOS to the generation length (the layout the lab models are trained on), which labels each
  draft token right or wrong by position;
- :func:`auroc` (rank statistic, ties counted half) and :func:`reliability_bins`.

Shapes: B rows, G = gen_length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DraftCanvas:
    tokens: torch.Tensor  # [B, G] long: the bridged draft token per position, -1 where none
    drafter_probs: torch.Tensor  # [B, G] float64: the drafter's probability of it (0 where none)
    texts: list[str]  # the drafts' texts
    drafter_nfe: list[int]


def draft_canvas(model, drafter, prompts: Sequence[str], gen_length: int,
                 max_tokens: int | None = None) -> DraftCanvas:
    """Draft ``prompts`` with ``drafter`` and bridge every draft onto ``model``'s canvas, every draft
    position kept (``init=inject``, ``rho=1``, no ``draft_min_confidence``); ``max_tokens`` is the
    drafter's budget (None: its default, as a warm start takes it)."""
    from fewstep.drafting.bridge import to_canvas
    from fewstep.drafting.drafter import default_budget, draft

    budget = max_tokens or default_budget(drafter, gen_length)
    drafts = draft(drafter, list(prompts), budget)
    bridged = [to_canvas(d, drafter.tokenizer, model.tokenizer, gen_length, model.eos_id) for d in drafts]
    tokens = torch.tensor([b.tokens for b in bridged], dtype=torch.long).view(len(prompts), gen_length)
    probs = torch.tensor([b.probs for b in bridged], dtype=torch.float64).view(len(prompts), gen_length)
    return DraftCanvas(tokens, probs, [b.text for b in bridged], [d.nfe for d in drafts])


@torch.no_grad()
def judge(model, prompts: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
    """One forward of ``model`` over the prompts (left-padded, as the decode loop batches them) with
    the canvas ``tokens`` [B, G] (-1: masked) -> [B, G] float64: the model's probability of each
    visible token (NaN where the canvas is masked)."""
    from fewstep.decoding.canvas import CanvasInit
    from fewstep.decoding.scoring import window_logits
    from fewstep.decoding.state import DecodeState, check_prompts

    g = tokens.shape[1]
    ids = [model.encode_prompt(p) for p in prompts]
    check_prompts(model, ids, g)
    st = DecodeState.start(model, ids, g, CanvasInit(tokens=tokens), guided=False)
    logits = window_logits(model, st.ids, st.att, None, slice(st.p, st.p + g), 0.0)  # [B, G, V]
    if model.mask_id < logits.shape[-1]:
        logits[..., model.mask_id] = float("-inf")
    probs = torch.softmax(logits, dim=-1, dtype=torch.float64)
    canvas = tokens.to(probs.device)
    p = probs.gather(-1, canvas.clamp(0, probs.shape[-1] - 1)[..., None]).squeeze(-1)
    return p.masked_fill((canvas < 0) | (canvas == model.mask_id), math.nan).cpu()


def reference_tokens(tokenizer, solution: str, gen_length: int, eos_id: int) -> list[int]:
    """The reference solution as the diffusion tokenizer encodes it (no special tokens), padded with
    EOS to ``gen_length`` (the diffusion training layout); cut at ``gen_length`` when longer."""
    ids = list(tokenizer.encode(solution, add_special_tokens=False))[:gen_length]
    return ids + [eos_id] * (gen_length - len(ids))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` separating ``labels`` True from False: the probability
    that a random True item scores above a random False one, ties counted half (Mann-Whitney U with
    mid-ranks). None when either class is empty."""
    pos = sum(bool(x) for x in labels)
    neg = len(labels) - pos
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):  # a run of tied scores shares the mean of its ranks (1-based)
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        rank_sum += (i + j + 2) / 2 * sum(bool(labels[k]) for k in order[i: j + 1])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def reliability_bins(scores: Sequence[float], labels: Sequence[bool], n_bins: int = 10) -> list[dict]:
    """Equal-width bins of [0, 1] (the last one closed): per bin its bounds, item count, mean score
    and fraction of True labels (None in an empty bin)."""
    bins = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(s, bool(y)) for s, y in zip(scores, labels) if lo <= s < hi or (b == n_bins - 1 and s == hi)]
        n = len(inside)
        bins.append({"lo": lo, "hi": hi, "count": n,
                     "mean_p": sum(s for s, _ in inside) / n if n else None,
                     "fraction_right": sum(y for _, y in inside) / n if n else None})
    return bins


def expected_calibration_error(bins: Sequence[dict]) -> float:
    """Count-weighted mean gap between a bin's mean score and its fraction right."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return sum(b["count"] * abs(b["mean_p"] - b["fraction_right"]) for b in bins if b["count"]) / total


def summarise_scores(scores: Sequence[float], labels: Sequence[bool], n_bins: int = 10) -> dict:
    """Counts, AUROC, mean score on right and wrong items, reliability bins and their ECE."""
    right = [s for s, y in zip(scores, labels) if y]
    wrong = [s for s, y in zip(scores, labels) if not y]
    bins = reliability_bins(scores, labels, n_bins)
    return {"n": len(labels), "right": len(right), "wrong": len(wrong), "auroc": auroc(scores, labels),
            "mean_p_right": sum(right) / len(right) if right else None,
            "mean_p_wrong": sum(wrong) / len(wrong) if wrong else None,
            "ece": expected_calibration_error(bins), "bins": bins}
