"""``llada`` (LLaDA's reference decoding): a fixed number of commits per step, from the linear
schedule of :func:`num_transfer_tokens`, taking the top-k eligible positions by confidence.

The schedule spreads the positions still masked when a block starts over the block's steps. A
block that starts partly filled (a warm start) gets a shorter schedule; when positions come back
to mask (a draft token revoked), what is masked now is spread anew over the steps that remain, so
revoked positions are decoded at the strategy's own pace, not all at the block's last step.
Without revocations the plan is never changed: exactly LLaDA's ``get_num_transfer_tokens``.

Shapes: B rows, L block length, S steps per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.errors import ConfigError
from fewstep.strategies.base import Decision, Policy, StepContext, param, topk_mask, validate

SUMMARY = "LLaDA's reference decoding: a fixed linear schedule of commits per step, top-k by confidence"


@dataclass(frozen=True)
class Params:
    steps: int = param(24, "denoising steps over the whole generation, split evenly over blocks", lo=1)

    def __post_init__(self) -> None:
        validate("llada", self)


def check(params: Params, cfg) -> None:
    blocks = cfg.gen_length // cfg.block_length
    if params.steps < blocks or params.steps % blocks:
        raise ConfigError(f"llada: steps ({params.steps}) must be a positive multiple of the number of blocks "
                          f"(gen_length / block_length = {blocks})")


def policy(params: Params, cfg) -> FixedSchedule:
    return FixedSchedule(params.steps // (cfg.gen_length // cfg.block_length))


def num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's linear schedule: each row's mask count divided evenly over ``steps``, the remainder
    going one each to the earliest steps. mask_count [B] -> [B, steps], rows summing to mask_count."""
    base = mask_count // steps  # [B]
    rem = mask_count % steps  # [B]
    extra = torch.arange(steps, device=mask_count.device)[None, :] < rem[:, None]  # [B, steps]
    return base[:, None] + extra.long()


def respread(schedule: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
    """schedule [B, S], masked [B] (positions masked now) -> the schedule with steps ``step``..S-1
    of each row that has more masks than it plans to commit spread anew over those steps (never
    planning fewer commits at a step than before)."""
    rest = schedule[:, step:]  # [B, S - step]
    behind = masked > rest.sum(1)  # [B]
    if not behind.any():
        return schedule
    out = schedule.clone()
    spread = torch.maximum(rest, num_transfer_tokens(masked, rest.shape[1]))
    out[:, step:] = torch.where(behind[:, None], spread, rest)
    return out


class FixedSchedule(Policy):
    """Commits ``schedule[b, s]`` positions at step s of the block (a row takes a forward only at
    the steps its schedule commits at)."""

    always_commits = True

    def __init__(self, steps_per_block: int):
        self.budget = steps_per_block
        self.schedule: torch.Tensor | None = None  # [B, S]

    def start_block(self, eligible: torch.Tensor) -> None:
        self.schedule = num_transfer_tokens(eligible.sum(1), self.budget)

    def rows_needing_forward(self, step: int, masked: torch.Tensor) -> torch.Tensor | None:
        assert self.schedule is not None
        self.schedule = respread(self.schedule, masked.sum(1), step)
        return self.schedule[:, step] > 0

    def step(self, ctx: StepContext) -> Decision:
        assert self.schedule is not None
        return Decision(topk_mask(ctx.confidence, self.schedule[:, ctx.step]))
