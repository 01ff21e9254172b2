"""The ``llada`` commit policy: a fixed number of commits per step (LLaDA's linear schedule),
the top-k eligible positions by confidence."""

from __future__ import annotations

import torch

from fewstep.decoding.schedule import num_transfer_tokens


def topk_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] highest-confidence positions of each row, never an ineligible (-inf) one.
    confidence [B, G], k [B] -> bool [B, G]. One sort, no loop over the batch."""
    order = confidence.argsort(dim=1, descending=True, stable=True)  # [B, G]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)


class FixedSchedule:
    """Commits ``schedule[b, s]`` positions at step s of the block (s counts from 0)."""

    def __init__(self, steps_per_block: int):
        self.steps_per_block = steps_per_block
        self.schedule: torch.Tensor | None = None

    def start_block(self, eligible: torch.Tensor) -> None:
        """eligible [B, G]: masked positions of the new block."""
        self.schedule = num_transfer_tokens(eligible.sum(1), self.steps_per_block)  # [B, S]

    def max_steps(self) -> int:
        return self.steps_per_block

    def step(self, confidence: torch.Tensor, step: int) -> torch.Tensor:
        """confidence [B, G] (-inf where ineligible) -> commit mask [B, G]."""
        assert self.schedule is not None
        return topk_mask(confidence, self.schedule[:, step])
