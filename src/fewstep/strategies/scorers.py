"""Scorers: a confidence per position from the (processed) logits and the chosen candidates.

Each takes probs [B, G, V] (softmax of noise-free logits) and candidates [B, G] and returns
confidence [B, G]; higher means "commit me sooner".
"""

from __future__ import annotations

import torch


def probability(probs: torch.Tensor, candidates: torch.Tensor, generator=None) -> torch.Tensor:
    """Probability of the candidate token (LLaDA's low-confidence remasking)."""
    return probs.gather(-1, candidates[..., None]).squeeze(-1)


def margin(probs: torch.Tensor, candidates: torch.Tensor, generator=None) -> torch.Tensor:
    """Top-1 minus top-2 probability."""
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def neg_entropy(probs: torch.Tensor, candidates: torch.Tensor, generator=None) -> torch.Tensor:
    """Negative entropy of the position's distribution (0 is certain)."""
    return (probs * probs.clamp_min(1e-30).log()).sum(-1)


def random(probs: torch.Tensor, candidates: torch.Tensor, generator=None) -> torch.Tensor:
    """Uniform random confidence (LLaDA's random remasking)."""
    return torch.rand(candidates.shape, generator=generator, device=candidates.device, dtype=torch.float64)


SCORERS = {"probability": probability, "margin": margin, "neg_entropy": neg_entropy, "random": random}
