"""``threshold`` (Fast-dLLM parallel decoding): commit every eligible position whose confidence is
at least ``threshold``, and always at least the most confident one, so a block of L masks ends
within L steps."""

from __future__ import annotations

import torch

from fewstep.strategies.base import AdaptivePolicy, StepContext, at_least_one


def select(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """confidence [B, G] (-inf: ineligible) -> commit mask [B, G]."""
    return at_least_one(confidence, confidence >= threshold)


class Threshold(AdaptivePolicy):
    def __init__(self, threshold: float, block_length: int):
        self.threshold, self.budget = threshold, block_length

    def step(self, ctx: StepContext) -> torch.Tensor:
        return select(ctx.confidence, self.threshold)
