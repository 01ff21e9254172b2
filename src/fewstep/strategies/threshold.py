"""``threshold`` (Fast-dLLM parallel decoding): commit every eligible position whose confidence is
at least ``threshold``, and always at least the most confident one, so a block of L masks ends
within L steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, at_least_one, param, validate

SUMMARY = "Fast-dLLM threshold parallel decoding: every position with confidence >= threshold (at least one)"


@dataclass(frozen=True)
class Params:
    threshold: float = param(0.9, "confidence a position needs to be committed", lo=0, hi=1, open_low=True)

    def __post_init__(self) -> None:
        validate("threshold", self)


def policy(params: Params, cfg) -> Threshold:
    return Threshold(params.threshold, cfg.block_length)


def select(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> commit mask [B, L]."""
    return at_least_one(confidence, confidence >= threshold)


class Threshold(AdaptivePolicy):
    def __init__(self, threshold: float, block_length: int):
        self.threshold, self.budget = threshold, block_length

    def step(self, ctx: StepContext) -> Decision:
        return Decision(select(ctx.confidence, self.threshold))
