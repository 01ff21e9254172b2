"""The decode loop: one streaming generator that every strategy, the CLI and evaluation consume.

Per row the loop keeps the canvas (prompt, left-padded, then ``gen_length`` positions), each
generation position's state (masked, provisional, committed: :mod:`fewstep.decoding.canvas`), the
step at which it was committed and the row's forward count (NFE). Blocks are decoded left to
right. A step of block [lo, hi) is:

1. rows with work: rows with an undecided position in the block (and, for ``llada``, whose
   schedule commits anything at this step); finished rows take no forward;
2. one forward over those rows -> logits of the block's positions only (``window_logits``); the
   input is token ids, or input embeddings where an embedding prior is active;
3. logits processing: guidance, EOS logit penalty, Gumbel noise -> candidates;
4. scoring -> confidence (EOS confidence lowered with ``eos_confidence=last``);
5. decision: the strategy's policy says which undecided positions to commit and which to revoke
   (:class:`fewstep.strategies.base.Decision`). The loop bounds it: at the block's last allowed
   step (``policy.max_steps()``) every undecided position of the block is committed and nothing
   is revoked, so every block ends within its budget whatever the policy does;
6. early stop (``early_stop``): when a row's generation up to the end of the block is decided and,
   from its first EOS on, all EOS, every later position is filled with EOS and the row takes no
   more forwards. A row whose answer has ended is never charged for blocks it would only fill
   with EOS, while a row that wrote EOS and then more text keeps decoding;
7. an event describing the step (a snapshot only when the consumer asks for every step).

A block is done when it holds no undecided position.

Shapes: B rows, P padded prompt length, G = gen_length, T = P + G, L = block length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fewstep.config import DecodeConfig
from fewstep.decoding.canvas import COMMITTED, MASKED, PROVISIONAL, CanvasInit, initial_state, progress, undecided
from fewstep.decoding.scoring import LAST, candidates_and_confidence, window_logits
from fewstep.errors import ConfigError, PromptTooLongError
from fewstep.models.adapter import DiffusionModel
from fewstep.strategies import make_policy
from fewstep.strategies.base import StepContext

__all__ = ["LAST", "StepEvent", "candidates_and_confidence", "check_prompts", "decode", "ended_rows", "left_pad"]


@dataclass
class StepEvent:
    """What one step did. Tensors are CPU copies that later steps cannot change."""

    step: int  # global step index (0-based)
    block: int
    committed: torch.Tensor  # [B, G] bool: positions committed at this step (early-stop fills included)
    revoked: torch.Tensor  # [B, G] bool: positions sent back to mask at this step
    canvas: torch.Tensor  # [B, G] token ids after the step (mask id where still masked)
    nfe: torch.Tensor  # [B] forward passes so far, per row
    committed_at: torch.Tensor  # [B, G] step at which each position was committed (-1: not yet)
    done: bool  # True on the last event of the decode
    state: torch.Tensor | None = None  # [B, G] int8 position states after the step (canvas.MASKED, ...)


def _snap(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that later steps cannot mutate (``.cpu()`` alone aliases CPU tensors)."""
    return t.detach().to("cpu", copy=True)


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


def ended_rows(gen: torch.Tensor, upto: int, eos_id: int) -> torch.Tensor:
    """[B] bool: rows whose gen[:, :upto] has an EOS and is all EOS from the first EOS on."""
    is_eos = gen[:, :upto] == eos_id  # [B, u]
    after_first = is_eos.long().cumsum(1) > 0  # [B, u] at or after the first EOS
    return is_eos.any(1) & (is_eos | ~after_first).all(1)


class _Lazy:
    """A value made on first use (the decode's random generator: seeding one costs more than a
    greedy step's own work, and greedy decoding never draws from it)."""

    def __init__(self, make):
        self.make, self.value = make, None

    def __call__(self) -> torch.Generator:
        if self.value is None:
            self.value = self.make()
        return self.value


def _scatter_rows(full_shape, fill, sub: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values [b, ...] of the rows ``sub`` -> [B, ...] with ``fill`` elsewhere."""
    return torch.full(full_shape, fill, dtype=values.dtype, device=values.device).index_copy_(0, sub, values)


def _input_embeds(model: DiffusionModel, ids: torch.Tensor, p: int, prior: torch.Tensor, use: torch.Tensor):
    """Token embeddings of ``ids`` [b, T], with ``prior`` [b, G, D] where ``use`` [b, G] holds."""
    emb = model.embed(ids)  # [b, T, D]
    emb[:, p:] = torch.where(use[..., None], prior.to(emb.dtype), emb[:, p:])
    return emb


def decode(model: DiffusionModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
           init: CanvasInit | None = None, snapshots: bool = True) -> Iterator[StepEvent]:
    """Decode a batch of tokenised prompts, yielding a :class:`StepEvent` per step.

    init: the initial canvas (provisional tokens, embedding priors); default all masked.
    snapshots: False yields only the last event (nothing is copied at the other steps)."""
    if cfg.strategy == "ar":
        raise ConfigError(f"strategy 'ar' needs a causal model; {model.name} is a diffusion model")
    if getattr(model, "mask_id", -1) < 0:
        raise ConfigError(f"{model.name} is not a masked diffusion model")
    check_prompts(model, prompts, cfg.gen_length)
    dev = model.device
    ids, att, p = left_pad(prompts, model.pad_id, cfg.gen_length)
    ids, att = ids.to(dev), att.to(dev)
    b, g, mask_id, eos_id = ids.shape[0], cfg.gen_length, model.mask_id, model.eos_id
    gen = ids[:, p:]  # [B, G] view of the canvas, updated in place
    tokens, state = initial_state(b, g, init, mask_id, dev)
    gen.copy_(tokens)
    prior = prior_mask = None
    if init is not None and init.embeds is not None:
        prior = init.embeds.to(dev)
        prior_mask = (init.embed_mask if init.embed_mask is not None else torch.ones(b, g, dtype=torch.bool)).to(dev)
    prompt_pos = torch.zeros_like(ids, dtype=torch.bool)  # what guidance masks (cfg_scale > 0)
    prompt_pos[:, :p] = att[:, :p].bool()
    nfe = torch.zeros(b, dtype=torch.long, device=dev)
    committed_at = torch.full((b, g), -1, dtype=torch.long, device=dev)
    generator = _Lazy(lambda: torch.Generator(device=dev).manual_seed(cfg.seed))
    policy = make_policy(cfg)
    cost = 2 if cfg.cfg_scale > 0 else 1
    step = 0
    for blk in range(cfg.num_blocks):
        lo, hi = blk * cfg.block_length, (blk + 1) * cfg.block_length
        window = slice(p + lo, p + hi)
        blk_state, blk_tokens, blk_at = state[:, lo:hi], gen[:, lo:hi], committed_at[:, lo:hi]  # views
        policy.start_block(blk_state == MASKED)
        budget = policy.max_steps()
        for s in range(budget):
            todo = undecided(blk_state)  # [B, L]
            rows = todo.any(1)  # [B]
            wanted = policy.rows_needing_forward(s)
            if wanted is not None:
                rows &= wanted
            if not rows.any():
                continue
            sub = None if rows.all() else rows.nonzero().squeeze(1)

            def pick(t: torch.Tensor, sub: torch.Tensor | None = sub) -> torch.Tensor:
                return t if sub is None else t[sub]

            embeds = None
            if prior is not None and prior_mask is not None:
                embeds = _input_embeds(model, pick(ids), p, pick(prior), pick(prior_mask & undecided(state)))
            logits = window_logits(model, pick(ids), pick(att), pick(prompt_pos), window, cfg.cfg_scale, embeds)
            cand, conf, probs = candidates_and_confidence(logits, cfg, eos_id, generator, mask_id)  # [b, L](, V)
            if sub is not None:  # the active rows' results back in full batch shape
                cand = _scatter_rows((b, hi - lo), 0, sub, cand)
                conf = _scatter_rows((b, hi - lo), float("-inf"), sub, conf)
                probs = _scatter_rows((b, hi - lo, probs.shape[-1]), 0.0, sub, probs)
                todo &= rows[:, None]
            eligible = (blk_state == MASKED) & rows[:, None]  # [B, L]
            if s == budget - 1:  # the loop's bound: complete the block
                commit, revoke = todo, None
            else:
                provisional = (blk_state == PROVISIONAL) & rows[:, None]
                ctx = StepContext(conf.masked_fill(~eligible, float("-inf")), cand, eligible, s, progress(state),
                                  eos_id, probs, blk_tokens, provisional)
                decision = policy.step(ctx)
                commit = decision.commit & todo
                revoke = None
                if decision.revoke is not None:
                    revoke = decision.revoke & ~commit & rows[:, None] & (blk_state != MASKED)
            blk_tokens.copy_(torch.where(commit & (blk_state == MASKED), cand, blk_tokens))
            blk_state.masked_fill_(commit, COMMITTED)
            blk_at.masked_fill_(commit, step)
            if revoke is not None:
                blk_tokens.masked_fill_(revoke, mask_id)
                blk_state.masked_fill_(revoke, MASKED)
                blk_at.masked_fill_(revoke, -1)
            nfe += rows.long() * cost
            stopped = None
            if cfg.early_stop and hi < g:
                stop = ~undecided(state[:, :hi]).any(1) & ended_rows(gen, hi, eos_id) & undecided(state[:, hi:]).any(1)
                if stop.any():
                    stopped = stop[:, None] & undecided(state)  # [B, G]
                    gen.masked_fill_(stopped, eos_id)
                    state.masked_fill_(stopped, COMMITTED)
                    committed_at.masked_fill_(stopped, step)
            done = not undecided(state).any()
            if snapshots or done:
                full_commit = torch.zeros((b, g), dtype=torch.bool, device=dev)
                full_commit[:, lo:hi] = commit
                if stopped is not None:
                    full_commit |= stopped
                full_revoke = torch.zeros((b, g), dtype=torch.bool, device=dev)
                if revoke is not None:
                    full_revoke[:, lo:hi] = revoke
                yield StepEvent(step, blk, _snap(full_commit), _snap(full_revoke), _snap(gen), _snap(nfe),
                                _snap(committed_at), done, _snap(state))
            step += 1
            if done:
                return
        if undecided(blk_state).any():
            raise RuntimeError(f"strategy {cfg.strategy!r} left block {blk} undecided after {budget} steps")
    # Unreachable: every block completes within its budget, so the last step returned.
    raise RuntimeError("decode ended without completing the generation")
