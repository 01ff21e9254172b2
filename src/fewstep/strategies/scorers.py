"""Scorers: a confidence per position from the processed logits and the chosen candidates.

Each takes probs [B, G, V] (softmax of the noise-free logits, float64) and candidates [B, G] and
returns confidence [B, G] (float64); higher means "commit sooner".
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
    """Negative entropy of the position's distribution (0 when certain)."""
    return (probs * probs.clamp_min(1e-300).log()).sum(-1)


def random(probs: torch.Tensor, candidates: torch.Tensor, generator=None) -> torch.Tensor:
    """Uniform random confidence (LLaDA's random remasking)."""
    return torch.rand(candidates.shape, generator=generator, device=candidates.device, dtype=torch.float64)


# DecodeConfig.remasking -> scorer
SCORERS = {"low_confidence": probability, "margin": margin, "entropy": neg_entropy, "random": random}
