"""The attention inputs a bidirectional model derives from the attention mask: the key padding mask
and the position ids (the count of real tokens before each position, so a left-padded row is
computed as if it stood alone), cut to a cache window.

Shapes: B batch, T sequence, W window."""

from __future__ import annotations

import torch


def key_mask_and_positions(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int,
                           width: int, device: torch.device, window: slice | None,
                           has_cache: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """-> key mask [B, 1, 1, T] (None: nothing padded) and position ids [B, W] of the positions run.
    ``width`` W is the input's length (T without a window); ``attention_mask`` / ``position_ids`` [B, T]."""
    key_mask = None
    if attention_mask is not None:
        real = attention_mask.bool()
        key_mask = real[:, None, None, :]  # padding keys are never attended to
        if position_ids is None:
            position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)
    if position_ids is None:
        t = width if attention_mask is None else attention_mask.shape[1]
        position_ids = torch.arange(t, device=device).expand(batch, t)
    if window is not None:
        if not has_cache:
            raise ValueError("a window forward needs a cache")
        position_ids = position_ids[:, window]
    return key_mask, position_ids
