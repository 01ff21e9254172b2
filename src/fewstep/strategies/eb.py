"""``eb``: the entropy-bounded sampler (EB-sampler, Ben-Hamu et al., arXiv 2505.24857).

At each step the eligible positions of the block are sorted by the entropy of the model's
distribution, lowest first, and the k first are committed for the largest k whose entropies,
summed, minus the largest of them, stay within ``entropy_bound``:

    sum_{j <= k} H_(j) - H_(k) <= entropy_bound      (H_(1) <= H_(2) <= ...)

The sum minus the largest bounds the error of committing k tokens at once relative to committing
them one by one (the paper's argument: the joint error is at most the sum of the per-token
entropies, and the last token's would be paid in any order). k = 1 always satisfies the bound, so
every step commits at least one position and a block of L masks ends within L steps.

``order`` is the paper's "error proxy" that ranks the positions before the bound is applied: their
entropy (the default, as above) or the loop's confidence score (``remasking``: the candidate's
probability by default), still bounded by the entropies' sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.strategies.base import AdaptivePolicy, Decision, StepContext, param, validate

SUMMARY = "entropy-bounded sampler: the lowest-entropy positions while sum(H) - max(H) <= entropy_bound"


@dataclass(frozen=True)
class Params:
    entropy_bound: float = param(0.1, "gamma: the entropy (nats) the committed set may hold beyond its largest", lo=0)
    order: str = param("entropy", "what ranks the positions: their entropy, or the loop's confidence score",
                       choices=("entropy", "confidence"))

    def __post_init__(self) -> None:
        validate("eb", self)


def policy(params: Params, cfg) -> EntropyBounded:
    return EntropyBounded(params.entropy_bound, cfg.block_length, params.order)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs [B, L, V] -> entropy [B, L] in nats."""
    return -(probs * probs.clamp_min(1e-300).log()).sum(-1)


def select(ent: torch.Tensor, eligible: torch.Tensor, bound: float, rank: torch.Tensor | None = None) -> torch.Tensor:
    """ent [B, L], eligible [B, L] bool -> commit mask [B, L]. Positions are taken in ascending
    order of ``rank`` [B, L] (default: the entropy itself)."""
    ent = ent.masked_fill(~eligible, float("inf"))
    key = ent if rank is None else rank.masked_fill(~eligible, float("inf"))
    order = key.argsort(dim=1, stable=True)  # [B, L]
    sorted_ent = ent.gather(1, order)
    finite = torch.isfinite(sorted_ent)
    h = sorted_ent.masked_fill(~finite, 0)
    spent = h.cumsum(1) - h.cummax(1).values  # [B, L] sum of the first k minus their largest
    ok = (spent <= bound) & finite
    prefix = ok.long().cumprod(1).bool()  # the first k all within the bound (spent never decreases)
    prefix[:, 0] = finite[:, 0]  # k = 1 always passes
    return torch.zeros_like(prefix).scatter_(1, order, prefix)


class EntropyBounded(AdaptivePolicy):
    def __init__(self, bound: float, block_length: int, order: str = "entropy"):
        self.bound, self.budget, self.order = bound, block_length, order

    def step(self, ctx: StepContext) -> Decision:
        assert ctx.probs is not None, "eb needs the step's probabilities"
        rank = -ctx.confidence if self.order == "confidence" else None
        return Decision(select(entropy(ctx.probs), ctx.eligible & torch.isfinite(ctx.confidence), self.bound, rank))
