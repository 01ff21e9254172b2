"""What a commit policy sees at each step, what it decides, and the interface every policy implements.

A policy is made per decode from its parameters (a frozen dataclass declared in the strategy's own
module), told when a block starts, and asked at each step what to do with the positions of the
active block: which to **commit** and which to **revoke** (the shape of diffusers' block-refinement
scheduler, whose ``transfer_index`` / ``editing_transfer_index`` play the same two roles).

- commit at a masked position writes the step's candidate token there; commit at a provisional
  position (a token injected from a draft and not yet confirmed) confirms the token it holds;
- revoke sends a provisional or committed position back to mask.

The loop enforces termination, not the policy: at the block's last allowed step (``max_steps()``)
every undecided position of the block is committed (after the revise stage has judged the draft
tokens there), and a row whose step commits, revokes and judges nothing completes its block at
once (its next forward would see the same canvas).

Every tensor is block-local: B rows, L = block length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fewstep.settings import describe as describe_params
from fewstep.settings import param, validate

__all__ = ["AdaptivePolicy", "CommitPolicy", "Decision", "Policy", "StepContext", "at_least_one", "describe_params",
           "param", "topk_mask", "validate"]


@dataclass
class StepContext:
    confidence: torch.Tensor  # [B, L] float64 score of each candidate, -inf where not eligible
    candidates: torch.Tensor  # [B, L] the token each position would take
    eligible: torch.Tensor  # [B, L] bool: masked positions of the block, in rows that took this forward
    step: int  # step index within the block, from 0
    progress: torch.Tensor | None  # [B] fraction of the generation committed before this step (None
    # unless the policy sets ``uses_progress``: it costs a reduction per step)
    eos_id: int
    probs: torch.Tensor | None = None  # [B, L, V] float64 softmax of the processed logits
    tokens: torch.Tensor | None = None  # [B, L] current tokens (the mask id where masked)
    provisional: torch.Tensor | None = None  # [B, L] bool: injected tokens not yet confirmed


@dataclass
class Decision:
    commit: torch.Tensor  # [B, L] bool
    revoke: torch.Tensor | None = None  # [B, L] bool (None: nothing)
    edit: torch.Tensor | None = None  # [B, L] bool: committed positions that take this step's candidate


class CommitPolicy(Protocol):
    """Everything the loop and the server ask of a policy."""

    uses_progress: bool  # the loop fills StepContext.progress (a reduction per step) only for policies that read it
    revokes: bool  # whether a committed token can still change (revoked or edited): streamed text then waits
    always_commits: bool  # every row that takes a forward commits at least one position (the loop then skips
    # its check for rows whose step changed nothing)
    canvas: str  # "mask": undecided positions hold the mask token; "uniform": they hold tokens and the policy
    # resamples every one at each step (start_canvas, conditioning, resample: fewstep.strategies.uniform_eb)

    def start_block(self, eligible: torch.Tensor) -> None:
        """eligible [B, L]: the masked positions of the block that starts now."""

    def max_steps(self) -> int:
        """Steps after which the loop completes the block."""

    def rows_needing_forward(self, step: int, masked: torch.Tensor) -> torch.Tensor | None:
        """[B] bool of rows that commit anything at this step, given the block's masked positions
        ``masked`` [B, L] now (None: every row with a masked position)."""

    def step(self, ctx: StepContext) -> Decision:
        """What to commit and revoke at this step."""


class Policy:
    """The defaults of :class:`CommitPolicy`: no per-block state, every row with masks takes a
    forward, nothing committed is ever revoked, and no promise that a step commits anything."""

    uses_progress = False
    revokes = False
    always_commits = False
    canvas = "mask"
    budget: int

    def start_block(self, eligible: torch.Tensor) -> None:
        pass

    def max_steps(self) -> int:
        return self.budget

    def rows_needing_forward(self, step: int, masked: torch.Tensor) -> torch.Tensor | None:
        return None


def at_least_one(confidence: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Add each row's single most confident eligible position to ``chosen``. [B, L] -> [B, L]."""
    best = confidence.argmax(dim=1, keepdim=True)  # [B, 1]
    # chosen positions are eligible (finite), so writing isfinite(best) there never unsets one
    return chosen.scatter(1, best, torch.isfinite(confidence.gather(1, best)))


def topk_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] highest-confidence positions of each row, never an ineligible (-inf) one.
    confidence [B, L], k [B] -> bool [B, L]. One sort, no loop over the batch."""
    order = confidence.argsort(dim=1, descending=True, stable=True)  # [B, L]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)


class AdaptivePolicy(Policy):
    """The policies that decide from confidences alone (threshold, factor, cad, eb): a budget of
    ``max_steps()`` steps per block (at least one commit per step makes ``block_length`` always
    enough)."""

    always_commits = True
