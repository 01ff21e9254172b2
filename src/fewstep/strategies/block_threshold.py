"""``block_threshold``: LLaDA 2's commit rule, with LLaDA 2.1's token editing (optional).

At each step, among the eligible (masked) positions of the active block: commit every position
whose confidence is above ``threshold`` (strictly, as LLaDA 2's reference generate), and at least
the ``minimal_topk`` most confident (capped by the number of eligible positions). With ``steps``
equal to the block length LLaDA 2's per-step minimum is one token: ``minimal_topk=1``.

Token editing (``editing_threshold`` < 1): a position of the active block that was committed at an
earlier step takes the model's candidate instead when the candidate differs from its token and its
probability is above ``editing_threshold``; each position is edited at most ``max_edits`` times
per block. Edits happen at the steps the block still takes (while it holds a mask), and the loop
completes the block at its last allowed step, so decoding terminates.

Shapes: B rows, L block length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, param, topk_mask, validate

SUMMARY = "LLaDA 2: commit above threshold, at least minimal_topk per step; optional token editing (LLaDA 2.1)"


@dataclass(frozen=True)
class Params:
    threshold: float = param(0.95, "commit every masked position whose confidence is above this", lo=0, hi=1)
    minimal_topk: int = param(1, "commits per step at least", lo=1)
    editing_threshold: float = param(1.0, "a committed token takes a different candidate whose probability is above "
                                          "this (1: no editing)", lo=0, hi=1)
    max_edits: int = param(1, "edits per position and block at most", lo=0)

    def __post_init__(self) -> None:
        validate("block_threshold", self)


def policy(params: Params, cfg) -> BlockThreshold:
    return BlockThreshold(params, cfg.block_length)


def select(confidence: torch.Tensor, threshold: float, minimal_topk: int) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> commit mask [B, L]."""
    above = (confidence > threshold).sum(1)  # [B]
    return topk_mask(confidence, above.clamp(min=minimal_topk))


def edits(probs: torch.Tensor, candidates: torch.Tensor, tokens: torch.Tensor, committed: torch.Tensor,
          threshold: float) -> torch.Tensor:
    """probs [B, L, V], candidates / tokens [B, L], committed [B, L] bool -> [B, L] positions to edit."""
    p = probs.gather(-1, candidates[..., None]).squeeze(-1)  # [B, L] probability of each candidate
    return committed & (candidates != tokens) & (p > threshold)


class BlockThreshold(AdaptivePolicy):
    def __init__(self, params: Params, block_length: int):
        self.params, self.budget = params, block_length
        self.revokes = params.editing_threshold < 1 and params.max_edits > 0  # token editing changes committed text
        self.edited: torch.Tensor | None = None  # [B, L] edits so far in the block

    def start_block(self, eligible: torch.Tensor) -> None:
        self.edited = torch.zeros(eligible.shape, dtype=torch.long, device=eligible.device)

    def step(self, ctx: StepContext) -> Decision:
        p = self.params
        commit = select(ctx.confidence, p.threshold, p.minimal_topk)
        if p.editing_threshold >= 1 or p.max_edits == 0 or ctx.probs is None or ctx.tokens is None:
            return Decision(commit)
        assert self.edited is not None
        # committed positions: neither masked nor provisional, in rows that took this forward
        pending = ctx.eligible if ctx.provisional is None else ctx.eligible | ctx.provisional
        took = torch.isfinite(ctx.confidence).any(1, keepdim=True)  # [B, 1]
        committed = ~pending & took & (self.edited < p.max_edits)
        edit = edits(ctx.probs, ctx.candidates, ctx.tokens, committed, p.editing_threshold)
        self.edited += edit
        return Decision(commit, edit=edit)
