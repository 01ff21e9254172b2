"""Block-causal attention (block diffusion, LLaDA 2 style): what the decode loop needs to know.

A block-causal model cuts each sequence into attention blocks of ``attention_block_length``
positions counted from its first real token (position ids from the attention mask, so left padding
changes nothing): attention is bidirectional inside a block and causal across blocks. The blocks
are aligned to the sequence start, as LLaDA 2 trains them, so the prompt's last attention block
also holds the first generated positions; the loop's decode blocks stay aligned to the generation
start (``block_length`` positions each), and in a ragged batch each row's attention blocks sit at
another offset from them.

A window forward with the rest of the sequence from the key/value cache is then exact when the
window holds, in every row, every position that shares an attention block with a position of the
active decode block (:func:`covering_window`): positions before it lie in earlier attention blocks,
which see nothing that changed since the block's first (full) forward; positions after it lie in
later attention blocks, which the window cannot see.

Shapes: b rows, T sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from fewstep.errors import ConfigError


def attention_block_length(module: Any) -> int:
    """The model's attention block length (0: full bidirectional attention)."""
    return int(getattr(getattr(module, "config", None), "attention_block_length", 0) or 0)


def covering_window(window: slice, att: torch.Tensor, block: int) -> slice:
    """The smallest slice holding ``window`` and, in every row of ``att`` [b, T], each real position
    in the same attention block (of length ``block``) as a position of ``window``."""
    t = att.shape[1]
    real = att.bool()  # [b, T]
    blk = (att.long().cumsum(-1) - 1).clamp(min=0) // block  # [b, T] attention block of each position
    idx = torch.arange(t, device=att.device)
    first, last = blk[:, window.start], blk[:, window.stop - 1]  # [b]
    before = real & (blk == first[:, None])  # [b, T] the first position's attention block
    after = real & (blk == last[:, None])  # [b, T] the last position's attention block
    start = int(torch.where(before, idx, t).min())
    stop = int(torch.where(after, idx, -1).max()) + 1
    return slice(min(start, window.start), max(stop, window.stop))


def block_causal_mask(position_ids: torch.Tensor, window: slice | None, block: int) -> torch.Tensor:
    """position_ids [b, T] -> bool [b, 1, W, T]: a query (the window's positions, or all T) may
    attend to a key whose attention block is its own or an earlier one."""
    blk = position_ids // block  # [b, T]
    q_blk = blk if window is None else blk[:, window]  # [b, W]
    return blk[:, None, None, :] <= q_blk[:, None, :, None]


def check_decode(model: Any, block_length: int) -> None:
    """Refuse, in one line, a decode block longer than a block-causal model's attention block: its
    later attention blocks would be predicted from earlier ones still masked, a context block
    diffusion does not decode from (LLaDA 2 finishes each block before the next)."""
    size = attention_block_length(getattr(model, "module", None))
    if size and block_length > size:
        raise ConfigError(f"{model.name} has block-causal attention in blocks of {size}: block_length must be at "
                          f"most {size}, got {block_length}")
