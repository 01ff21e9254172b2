"""``cad`` (CD4LM confidence-adaptive decoding).

At each step, among the eligible positions of the block:
``k = max(#{confidence >= tau among the top max_tokens}, min_tokens)``, capped by the number of
eligible positions, and the top k are committed. EOS guard: while the committed fraction of the
whole generation is below ``eos_min_progress``, positions whose candidate is EOS are not eligible.
At the block's last allowed step (``max_steps_per_block``) the loop commits every masked position
left in the block, EOS-guarded ones included, so CAD never returns a mask token. When the guard
leaves a row nothing to commit, the row's canvas would not change before that last step, so the
loop completes the block at once instead of spending forwards that commit nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, param, topk_mask, validate

SUMMARY = "CD4LM confidence-adaptive decoding: k = max(#confident among the top max_tokens, min_tokens)"


@dataclass(frozen=True)
class Params:
    tau: float = param(0.95, "confidence threshold", lo=0, hi=1, open_low=True)
    min_tokens: int = param(1, "commits per step at least", lo=1)
    max_tokens: int = param(0, "only the top max_tokens are counted (0: the block length)", lo=0)
    max_steps_per_block: int = param(0, "after this many steps the block is completed (0: the block length)", lo=0)
    eos_min_progress: float = param(0.0, "EOS candidates wait until this fraction of the generation is committed",
                                    lo=0, hi=1)

    def __post_init__(self) -> None:
        validate("cad", self)


def policy(params: Params, cfg) -> CAD:
    return CAD(params.tau, params.min_tokens, params.max_tokens, params.max_steps_per_block, params.eos_min_progress,
               cfg.block_length)


def select(confidence: torch.Tensor, tau: float, min_tokens: int, max_tokens: int) -> torch.Tensor:
    """confidence [B, L] (-inf: ineligible) -> commit mask [B, L] (the guard is applied before)."""
    eligible = torch.isfinite(confidence)
    top = topk_mask(confidence, torch.full((confidence.shape[0],), max_tokens, device=confidence.device))
    confident = (top & (confidence >= tau)).sum(1)  # [B]
    k = torch.minimum(confident.clamp(min=min_tokens), eligible.sum(1))  # [B]
    return topk_mask(confidence, k)


class CAD(AdaptivePolicy):
    uses_progress = True  # the EOS guard

    def __init__(self, tau: float, min_tokens: int, max_tokens: int, max_steps_per_block: int,
                 eos_min_progress: float, block_length: int):
        self.tau, self.min_tokens = tau, min_tokens
        self.max_tokens = max_tokens or block_length
        self.budget = max_steps_per_block or block_length
        self.eos_min_progress = eos_min_progress
        self.always_commits = eos_min_progress == 0  # the EOS guard can leave a row nothing to commit

    def step(self, ctx: StepContext) -> Decision:
        assert ctx.progress is not None
        guarded = (ctx.candidates == ctx.eos_id) & (ctx.progress < self.eos_min_progress)[:, None]
        conf = ctx.confidence.masked_fill(guarded, float("-inf"))
        return Decision(select(conf, self.tau, self.min_tokens, self.max_tokens))
