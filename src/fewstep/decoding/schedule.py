"""Transfer schedules: how many masked positions each step of a block commits."""

from __future__ import annotations

import torch


def num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's linear schedule: each row's mask count divided evenly over ``steps``, the remainder
    going one each to the earliest steps. mask_count [B] -> [B, steps], rows summing to mask_count."""
    base = mask_count // steps  # [B]
    rem = mask_count % steps  # [B]
    extra = torch.arange(steps, device=mask_count.device)[None, :] < rem[:, None]  # [B, steps]
    return base[:, None] + extra.long()
