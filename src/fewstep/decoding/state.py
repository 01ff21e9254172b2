"""The state of one decode: the canvas and per-position bookkeeping, the active block's views into
it, and the rows that take a step's forward.

Shapes: B rows, P padded prompt length, G = gen_length, T = P + G, L block length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewstep.decoding.canvas import COMMITTED, MASKED, CanvasInit, initial_state, undecided
from fewstep.errors import ConfigError, PromptTooLongError


def check_prompts(model, prompts: Sequence[Sequence[int]], gen_length: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty")
        if len(p) + gen_length > model.max_length:
            raise PromptTooLongError(
                f"prompt {i} has {len(p)} tokens; with gen_length={gen_length} it exceeds the model's "
                f"context of {model.max_length} tokens"
            )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, extra: int = 0):
    """Prompts right-aligned in a [B, P + extra] tensor. -> ids, attention (1 on real tokens), P."""
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p + extra), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), p + extra), dtype=torch.long)
    for i, x in enumerate(prompts):  # building the batch once, not the hot path
        ids[i, p - len(x):p] = torch.tensor(list(x), dtype=torch.long)
        att[i, p - len(x):] = 1
    return ids, att, p


@dataclass
class Block:
    """Block ``index`` = generation positions [lo, hi): views into the decode's tensors, so writing
    them writes the canvas."""

    index: int
    lo: int
    hi: int
    window: slice  # its positions in the whole sequence [P + lo, P + hi)
    tokens: torch.Tensor  # [B, L] view of the canvas
    state: torch.Tensor  # [B, L] view of the position states
    at: torch.Tensor  # [B, L] view of the commit steps

    def apply(self, commit: torch.Tensor | None, cand: torch.Tensor | None, revoke: torch.Tensor | None,
              mask_id: int, step: int, keep_provisional: bool = True) -> None:
        """In place: ``commit`` [B, L] makes positions committed (a masked one takes ``cand``, a
        provisional one keeps its token); ``revoke`` [B, L] sends positions back to mask.
        ``keep_provisional=False``: the caller knows no committed position is provisional (no
        draft), and every one may take ``cand`` (an edited position already holds it)."""
        if commit is not None:
            if cand is not None:
                take = commit & (self.state == MASKED) if keep_provisional else commit
                self.tokens.copy_(torch.where(take, cand, self.tokens))
            self.state.masked_fill_(commit, COMMITTED)
            self.at.masked_fill_(commit, step)
        if revoke is not None:
            self.tokens.masked_fill_(revoke, mask_id)
            self.state.masked_fill_(revoke, MASKED)
            self.at.masked_fill_(revoke, -1)


@dataclass
class DecodeState:
    """Everything one decode changes as it goes."""

    ids: torch.Tensor  # [B, T] padded prompts, then the generation canvas (updated in place)
    att: torch.Tensor  # [B, T] 1 on real tokens
    p: int  # padded prompt length
    state: torch.Tensor  # [B, G] int8 position states (canvas.MASKED, PROVISIONAL, COMMITTED)
    committed_at: torch.Tensor  # [B, G] step at which each position was committed (-1: not yet)
    nfe: torch.Tensor  # [B] forward passes so far, per row
    guide: torch.Tensor | None  # [B, T] the prompt positions guidance masks (cfg_scale > 0 only)
    mask_id: int
    eos_id: int
    step: int = 0  # global step index

    @classmethod
    def start(cls, model, prompts: Sequence[Sequence[int]], gen_length: int, init: CanvasInit | None,
              guided: bool) -> DecodeState:
        dev = model.device
        ids, att, p = left_pad(prompts, model.pad_id, gen_length)
        ids, att = ids.to(dev), att.to(dev)
        b = ids.shape[0]
        tokens, state = initial_state(b, gen_length, init, model.mask_id, dev)
        ids[:, p:] = model.mask_id if tokens is None else tokens
        guide = None
        if guided:
            guide = torch.zeros_like(ids, dtype=torch.bool)
            guide[:, :p] = att[:, :p].bool()
        return cls(ids, att, p, state, torch.full((b, gen_length), -1, dtype=torch.long, device=dev),
                   torch.zeros(b, dtype=torch.long, device=dev), guide, model.mask_id, model.eos_id)

    @property
    def gen(self) -> torch.Tensor:
        """[B, G] view of the generation canvas."""
        return self.ids[:, self.p:]

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    def block(self, index: int, length: int) -> Block:
        lo, hi = index * length, (index + 1) * length
        return Block(index, lo, hi, slice(self.p + lo, self.p + hi), self.gen[:, lo:hi], self.state[:, lo:hi],
                     self.committed_at[:, lo:hi])

    def done(self) -> bool:
        return not bool(undecided(self.state).any())


class Rows:
    """The rows that take a step's forward: ``mask`` [B] bool; ``pick`` selects their rows of a
    batch tensor, ``scatter`` puts their results back in full batch shape."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self.count = int(mask.sum())
        self.all = self.count == mask.shape[0]
        self._index = None if self.all else mask.nonzero().squeeze(1)  # [b]

    @property
    def index(self) -> torch.Tensor:
        """[b] the rows' places in the batch."""
        if self._index is None:
            self._index = torch.arange(self.mask.shape[0], device=self.mask.device)
        return self._index

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.all else t[self.index]

    def scatter(self, values: torch.Tensor, fill) -> torch.Tensor:
        """values [b, ...] -> [B, ...] with ``fill`` in the other rows."""
        if self.all:
            return values
        shape = (self.mask.shape[0], *values.shape[1:])
        return torch.full(shape, fill, dtype=values.dtype, device=values.device).index_copy_(0, self.index, values)
