"""What a commit policy sees at each step, and the interface every policy implements.

A policy is created per decode from the configuration, told when a block starts, and asked at
each step which masked positions of the block to commit. It must terminate: within
``max_steps()`` steps of a block every eligible position has to be committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class StepContext:
    confidence: torch.Tensor  # [B, G] float64, -inf where not eligible
    candidates: torch.Tensor  # [B, G] the token each position would take
    eligible: torch.Tensor  # [B, G] bool: masked positions of the current block (rows with work)
    step: int  # step index within the block, from 0
    progress: torch.Tensor  # [B] fraction of the generation already decoded before this step
    eos_id: int


class CommitPolicy(Protocol):
    def start_block(self, eligible: torch.Tensor) -> None:
        """eligible [B, G]: the masked positions of the block that starts now."""

    def max_steps(self) -> int:
        """Steps after which the block is guaranteed to be complete."""

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        """[B] bool of rows that commit anything at this step (None: every row with masks)."""

    def step(self, ctx: StepContext) -> torch.Tensor:
        """-> [B, G] bool commit mask (a subset of ctx.eligible)."""


def at_least_one(confidence: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Add each row's single most confident eligible position to ``chosen``. [B, G] -> [B, G]."""
    best = confidence.argmax(dim=1, keepdim=True)  # [B, 1]
    top = torch.zeros_like(chosen).scatter_(1, best, True) & torch.isfinite(confidence)
    return chosen | top


class AdaptivePolicy:
    """Shared defaults of the policies that decide from confidences alone (threshold, factor, cad):
    no per-block state, every row with masks takes a forward, and a budget of ``max_steps()``
    steps per block (at least one commit per step makes ``block_length`` always enough)."""

    budget: int

    def start_block(self, eligible: torch.Tensor) -> None:
        pass

    def max_steps(self) -> int:
        return self.budget

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        return None
