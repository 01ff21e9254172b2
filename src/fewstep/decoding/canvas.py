"""The canvas: the generation region's tokens and each position's state.

Per position, one of three states:

- ``MASKED``: holds the mask token, waiting to be decoded;
- ``PROVISIONAL``: holds a token injected from a draft (a warm start) that the model has not yet
  confirmed; it may be confirmed (becomes committed) or revoked (back to masked);
- ``COMMITTED``: decided; a strategy that revises may still revoke it.

:func:`undecided` is the one definition of "still to be decided" (masked or provisional) that the
loop uses for eligibility, completion and early stop; :func:`progress` counts committed positions
only. An initial canvas (:class:`CanvasInit`) gives token ids and/or input embeddings per position.

Shapes: B rows, G = gen_length, D embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASKED, PROVISIONAL, COMMITTED = 0, 1, 2


@dataclass
class CanvasInit:
    """How the generation region starts (default: all masked).

    tokens: [B, G] long, a token id where the canvas starts with a provisional token and -1
        where it starts masked.
    embeds: [B, G, D] target input embeddings where ``embed_mask`` [B, G] holds: until the position
        is committed the model's input there is ``(1 - a) * E[current token] + a * embeds`` with
        ``a = alpha * (1 - alpha_decay) ** step`` (embedding interpolation; alpha 1, decay 0: the
        given embeddings as they are).
    """

    tokens: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    embed_mask: torch.Tensor | None = None
    alpha: float = 1.0
    alpha_decay: float = 0.0


def undecided(state: torch.Tensor) -> torch.Tensor:
    """[..., G] state -> bool: positions still to be decided (masked or provisional)."""
    return state != COMMITTED


def progress(state: torch.Tensor) -> torch.Tensor:
    """[B, G] state -> [B] float64: fraction of the generation committed."""
    return (state == COMMITTED).double().mean(1)


def initial_state(b: int, g: int, init: CanvasInit | None, mask_id: int, device) -> tuple[torch.Tensor | None,
                                                                                         torch.Tensor]:
    """-> generation tokens [B, G] (None: all masked) and state [B, G] (int8) for an initial canvas."""
    state = torch.full((b, g), MASKED, dtype=torch.int8, device=device)
    if init is None or init.tokens is None:
        return None, state
    tokens = torch.full((b, g), mask_id, dtype=torch.long, device=device)
    if init.tokens is not None:
        given = init.tokens.to(device)
        if given.shape != (b, g):
            raise ValueError(f"init.tokens must have shape {(b, g)}, got {tuple(given.shape)}")
        keep = (given >= 0) & (given != mask_id)
        tokens = torch.where(keep, given, tokens)
        state = state.masked_fill(keep, PROVISIONAL)
    return tokens, state
