"""``threshold`` (Fast-dLLM parallel decoding): commit every eligible position whose confidence is
at least ``threshold``, and always at least the most confident one, so a block of L masks ends
within L steps."""

from __future__ import annotations

import torch

from fewstep.strategies.base import StepContext, at_least_one


def select(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """confidence [B, G] (-inf: ineligible) -> commit mask [B, G]."""
    return at_least_one(confidence, confidence >= threshold)


class Threshold:
    def __init__(self, threshold: float, block_length: int):
        self.threshold, self.block_length = threshold, block_length

    def start_block(self, eligible: torch.Tensor) -> None:
        pass

    def max_steps(self) -> int:
        return self.block_length

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        return None

    def step(self, ctx: StepContext) -> torch.Tensor:
        return select(ctx.confidence, self.threshold)
