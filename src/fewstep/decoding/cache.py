"""The decode loop's key/value cache (``DecodeConfig.cache``), Fast-dLLM style.

Per row the loop remembers the step of the block at which the row's cache was last refreshed. A
row's forward at a step is either

- a **refresh**: the whole sequence is run (exactly the uncached forward) and the row's keys and
  values are stored; at the row's first forward in each block, and every ``cache_refresh`` steps
  after it (0: never again within the block);
- a **window forward**: only the window is run (``prefix``: the active block and everything after
  it; ``dual``: the active block alone) and the rest of the sequence is read from the cache, which
  holds the keys and values of the last refresh (approximate: the active block has changed since).

The choice is made per row from the row's own history, so a row decodes the same tokens whatever
it is batched with. With ``cache_refresh=1`` every forward is a refresh: the uncached decode.

Shapes: B rows of the batch, b rows of this step, T sequence, L block length, V vocabulary.
"""

from __future__ import annotations

import torch

from fewstep.decoding.scoring import window_logits
from fewstep.errors import ConfigError
from fewstep.models.blockcausal import attention_block_length, covering_window
from fewstep.models.kvcache import KVCache


class StepCache:
    """The cache of one decode and the rows' refresh steps."""

    def __init__(self, model, mode: str, refresh_every: int, batch: int, guided: bool, device: torch.device):
        if not getattr(model, "supports_cache", False):
            raise ConfigError(f"cache={mode}: {model.name} does not support a key/value cache (use cache=none)")
        self.mode, self.every = mode, refresh_every
        self.attention_block = attention_block_length(model.module)  # block-causal models: > 0
        self.kv = KVCache(rows=batch * (2 if guided else 1))
        self.fresh_at = torch.full((batch,), -1, dtype=torch.long, device=device)  # [B] -1: not in this block

    def start_block(self) -> None:
        self.fresh_at.fill_(-1)

    def window(self, block: slice, length: int) -> slice:
        """The positions a window forward runs for the active block ``block`` of a sequence of ``length``."""
        return slice(block.start, length) if self.mode == "prefix" else block

    def logits(self, model, x: torch.Tensor, att: torch.Tensor, guide: torch.Tensor | None, block: slice,
               cfg_scale: float, embeds: torch.Tensor | None, rows: torch.Tensor, step: int) -> torch.Tensor:
        """Logits [b, L, V] of the block for the rows ``rows`` [b] of the batch (``x``, ``att``,
        ``guide``, ``embeds`` are those rows' inputs [b, T(, D)]); refreshes whichever rows are due."""
        due = self.fresh_at[rows] < 0  # [b]
        if self.every > 0:
            due |= step - self.fresh_at[rows] >= self.every
        self.fresh_at[rows[due]] = step
        out: torch.Tensor | None = None
        window = self.window(block, x.shape[1])
        if self.attention_block and bool((~due).any()):  # block-causal: whole attention blocks, exact
            window = covering_window(window, att, self.attention_block)
        for part, cwin in ((due, None), (~due, window)):
            if not part.any():
                continue
            idx = None if bool(part.all()) else part.nonzero().squeeze(1)

            def sel(t, idx: torch.Tensor | None = idx):
                return t if t is None or idx is None else t[idx]

            got = window_logits(model, sel(x), sel(att), sel(guide), block, cfg_scale, sel(embeds), self.kv,
                                sel(rows), cwin)
            if idx is None:
                return got
            if out is None:
                out = got.new_empty((x.shape[0], *got.shape[1:]))
            out[idx] = got
        assert out is not None
        return out
