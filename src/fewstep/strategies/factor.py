"""``factor`` (Fast-dLLM's factor rule): sort the eligible confidences in descending order and
commit the longest prefix in which the n-th (1-based) confidence c_n satisfies
c_n >= 1 - factor / (n + 1); always at least the most confident position."""

from __future__ import annotations

import torch

from fewstep.strategies.base import AdaptivePolicy, StepContext, at_least_one


def select(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """confidence [B, G] (-inf: ineligible) -> commit mask [B, G]."""
    sorted_conf, order = confidence.sort(dim=1, descending=True, stable=True)  # [B, G]
    n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device, dtype=confidence.dtype)
    ok = sorted_conf >= 1 - factor / (n + 1)  # [B, G]
    prefix = ok.long().cumprod(dim=1).bool() & torch.isfinite(sorted_conf)  # the longest all-ok prefix
    chosen = torch.zeros_like(prefix).scatter_(1, order, prefix)
    return at_least_one(confidence, chosen)


class Factor(AdaptivePolicy):
    def __init__(self, factor: float, block_length: int):
        self.factor, self.budget = factor, block_length

    def step(self, ctx: StepContext) -> torch.Tensor:
        return select(ctx.confidence, self.factor)
