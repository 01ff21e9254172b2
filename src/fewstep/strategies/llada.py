"""``llada`` (LLaDA's reference decoding): a fixed number of commits per step, from the linear
schedule of :func:`fewstep.decoding.schedule.num_transfer_tokens`, taking the top-k eligible
positions by confidence. The schedule counts the positions still masked when a block starts, so a
block that starts partly filled (a warm start) gets a shorter schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.decoding.schedule import num_transfer_tokens
from fewstep.errors import ConfigError
from fewstep.strategies.base import Decision, StepContext, param, topk_mask, validate

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


class FixedSchedule:
    """Commits ``schedule[b, s]`` positions at step s of the block."""

    uses_progress = False

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

    def step(self, ctx: StepContext) -> Decision:
        assert self.schedule is not None
        left = ctx.eligible.sum(1)  # [B]
        if (left > self.schedule[:, ctx.step:].sum(1)).any():  # revocations added masks: spread them anew
            rest = self.steps_per_block - ctx.step
            self.schedule[:, ctx.step:] = torch.maximum(self.schedule[:, ctx.step:], num_transfer_tokens(left, rest))
        return Decision(topk_mask(ctx.confidence, self.schedule[:, ctx.step]))
