"""``factor_prefix``: a variant of Fast-dLLM's factor rule (``factor``). Sort the eligible
confidences in descending order and commit the longest prefix in which the n-th (1-based)
confidence c_n satisfies c_n >= 1 - factor / (n + 1); always at least the most confident position.

It differs from Fast-dLLM's ``get_transfer_index_dynamic`` (:mod:`fewstep.strategies.factor`) in
one case only: when the first position to fail the bound is the last eligible one, Fast-dLLM
commits every eligible position, this rule commits all but that one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, at_least_one, param, validate

SUMMARY = "factor variant: exactly the longest sorted prefix whose n-th confidence >= 1 - factor / (n + 1)"


@dataclass(frozen=True)
class Params:
    factor: float = param(1.0, "f of the bound 1 - f / (n + 1) on the n-th most confident position", lo=0,
                          open_low=True)

    def __post_init__(self) -> None:
        validate("factor_prefix", self)


def policy(params: Params, cfg) -> FactorPrefix:
    return FactorPrefix(params.factor, cfg.block_length)


def select(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> commit mask [B, L]."""
    sorted_conf, order = confidence.sort(dim=1, descending=True, stable=True)  # [B, L]
    n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device, dtype=confidence.dtype)
    ok = sorted_conf >= 1 - factor / (n + 1)  # [B, L]
    prefix = ok.long().cumprod(dim=1).bool() & torch.isfinite(sorted_conf)  # the longest all-ok prefix
    chosen = torch.zeros_like(prefix).scatter_(1, order, prefix)
    return at_least_one(confidence, chosen)


class FactorPrefix(AdaptivePolicy):
    def __init__(self, factor: float, block_length: int):
        self.factor, self.budget = factor, block_length

    def step(self, ctx: StepContext) -> Decision:
        return Decision(select(ctx.confidence, self.factor))
