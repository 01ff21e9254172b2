"""A key/value cache for decoding a block at a time (Fast-dLLM's approximate cache, and the exact
cache of block-causal models).

The protocol between the decode loop and a model that declares ``supports_cache = True``:

- a **full forward** (``window=None``) runs every position and stores each layer's keys and values
  (after rotary) in the cache, for the rows ``cache_rows`` of the cache (None: rows 0..b-1);
- a **window forward** (``window=slice(w0, w1)``) runs only the positions of the window: the
  model's input is the window's tokens [b, W]; each layer computes keys and values for the window,
  writes them into the cache over the stored ones, and attends to the whole cached sequence (the
  other positions' keys and values as the last full forward left them).

The loop's ``prefix`` mode is a window running to the end of the sequence ([block start, T)), so
only the prompt and the finished blocks come from the cache; ``dual`` is the active block alone,
so the positions after it come from the cache too. The attention mask stays [b, T] (keys) and the
position ids [b, T]; the model slices them to the window itself.

Shapes: N rows the cache holds, b rows of one forward, Hk key/value heads, T sequence, W window,
Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Per-layer keys and values [N, Hk, T, Dh], allocated on the first store."""

    rows: int  # N: rows the cache holds (a decode batch, twice that with guidance)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None,
               window: slice | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` [b, Hk, W, Dh] of ``layer`` at ``rows`` (None: the first b rows) and the
        positions of ``window`` (None: all T); return the keys and values [b, Hk, T, Dh] that those
        rows attend to."""
        if window is None:  # a full forward: the cache takes these keys and values
            if rows is None and k.shape[0] == self.rows:  # every row: keep the tensors themselves, no copy
                self.keys[layer], self.values[layer] = k, v
                return k, v
            if layer not in self.keys:
                shape = (self.rows, *k.shape[1:])
                self.keys[layer] = k.new_zeros(shape)
                self.values[layer] = v.new_zeros(shape)
            _store(self.keys[layer], k, rows)
            _store(self.values[layer], v, rows)
            return k, v
        if layer not in self.keys:
            raise RuntimeError("a window forward needs a full forward first (the cache is empty)")
        ks, vs = self.keys[layer], self.values[layer]
        if rows is None and k.shape[0] == self.rows:  # all rows: write in place, attend to the store
            ks[:, :, window] = k
            vs[:, :, window] = v
            return ks, vs
        idx = rows if rows is not None else torch.arange(k.shape[0], device=k.device)
        kr, vr = ks[idx], vs[idx]  # [b, Hk, T, Dh] copies of these rows
        kr[:, :, window] = k
        vr[:, :, window] = v
        return kr, vr

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (e.g. rows whose decode continues), renumbered 0..len(rows)-1."""
        for store in (self.keys, self.values):
            for layer, t in store.items():
                store[layer] = t[rows]
        self.rows = int(rows.numel())


def _store(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor | None) -> None:
    if rows is None:
        dst[: src.shape[0]] = src
    else:
        dst.index_copy_(0, rows, src)
