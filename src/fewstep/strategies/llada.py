"""``llada`` (LLaDA's reference decoding): a fixed number of commits per step, from the linear
schedule of :func:`fewstep.decoding.schedule.num_transfer_tokens`, taking the top-k eligible
positions by confidence."""

from __future__ import annotations

import torch

from fewstep.decoding.schedule import num_transfer_tokens
from fewstep.strategies.base import StepContext


def topk_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] highest-confidence positions of each row, never an ineligible (-inf) one.
    confidence [B, G], k [B] -> bool [B, G]. One sort, no loop over the batch."""
    order = confidence.argsort(dim=1, descending=True, stable=True)  # [B, G]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)


class FixedSchedule:
    """Commits ``schedule[b, s]`` positions at step s of the block."""

    def __init__(self, steps_per_block: int):
        self.steps_per_block = steps_per_block
        self.schedule: torch.Tensor | None = None

    def start_block(self, eligible: torch.Tensor) -> None:
        self.schedule = num_transfer_tokens(eligible.sum(1), self.steps_per_block)  # [B, S]

    def max_steps(self) -> int:
        return self.steps_per_block

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        assert self.schedule is not None
        return self.schedule[:, step] > 0

    def step(self, ctx: StepContext) -> torch.Tensor:
        assert self.schedule is not None
        return topk_mask(ctx.confidence, self.schedule[:, ctx.step])
