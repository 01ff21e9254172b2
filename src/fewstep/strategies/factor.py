"""``factor``: Fast-dLLM's factor rule (``get_transfer_index_dynamic`` in Fast-dLLM's
``llada/generate.py``), exactly.

Per row, over the N eligible (masked) positions of the block, confidences sorted in descending
order c_1 >= ... >= c_N: the n-th (1-based) must reach the bound 1 - factor / (n + 1), except the
first, whose bound is -1 (it always passes). Scan from the first; k (0-based) is the index of the
first that fails, or N - 1 when none fails. When k is 0 or N - 1 commit k + 1 positions, else k:
the k + 1 (or k) most confident. So when none fails, or only the last one does, all N are
committed (the longest passing prefix would leave that last one masked: ``factor_prefix`` is that
variant). A row with no eligible position commits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, param, topk_mask, validate

SUMMARY = "Fast-dLLM factor rule: commit while the n-th most confident >= 1 - factor / (n + 1)"


@dataclass(frozen=True)
class Params:
    factor: float = param(1.0, "f of the bound 1 - f / (n + 1) on the n-th most confident position", lo=0,
                          open_low=True)

    def __post_init__(self) -> None:
        validate("factor", self)


def policy(params: Params, cfg) -> Factor:
    return Factor(params.factor, cfg.block_length)


def count(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> [B] how many of the most confident to commit."""
    eligible = torch.isfinite(confidence)  # [B, L]
    n_elig = eligible.sum(1)  # [B] N
    sorted_conf = confidence.sort(dim=1, descending=True).values  # [B, L] eligible first
    n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device, dtype=confidence.dtype)
    bound = 1 - factor / (n + 1)  # [L]
    bound[0] = -1.0  # the most confident always passes
    idx = torch.arange(confidence.shape[1], device=confidence.device)
    fails = (sorted_conf < bound) & (idx < n_elig[:, None])  # [B, L]
    first = torch.where(fails.any(1), fails.long().argmax(1), n_elig - 1)  # [B] k
    k = torch.where((first == 0) | (first == n_elig - 1), first + 1, first)
    return torch.where(n_elig > 0, k, torch.zeros_like(k))


def select(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> commit mask [B, L]."""
    return topk_mask(confidence, count(confidence, factor))


class Factor(AdaptivePolicy):
    def __init__(self, factor: float, block_length: int):
        self.factor, self.budget = factor, block_length

    def step(self, ctx: StepContext) -> Decision:
        return Decision(select(ctx.confidence, self.factor))
