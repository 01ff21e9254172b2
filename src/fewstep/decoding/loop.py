"""The decode loop: one streaming generator that every strategy, the CLI and evaluation consume.

Per row the loop keeps the canvas (prompt, left-padded, then ``gen_length`` positions), each
generation position's state (masked, provisional, committed: :mod:`fewstep.decoding.canvas`), the
step at which it was committed and the row's forward count (NFE). Blocks are decoded left to
right. A step of block [lo, hi) is:

1. rows with work: rows with an undecided position in the block (and, for ``llada``, whose
   schedule commits anything at this step); finished rows take no forward;
2. one forward over those rows -> logits of the block's positions only (``window_logits``); the
   input is token ids, or input embeddings where an embedding prior is active. With a key/value
   cache (``cache``, :mod:`fewstep.decoding.cache`) a row's forward runs only the active window
   and reads the rest of the sequence from the cache, except at the row's first step of a block
   (and every ``cache_refresh`` steps), which runs everything and refreshes the cache;
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
from fewstep.decoding.cache import StepCache
from fewstep.decoding.canvas import COMMITTED, MASKED, PROVISIONAL, CanvasInit, initial_state, progress, undecided
from fewstep.decoding.revise import revise, token_probability, verify_prefix
from fewstep.decoding.scoring import LAST, candidates_and_confidence, window_logits
from fewstep.errors import ConfigError, PromptTooLongError
from fewstep.models.adapter import DiffusionModel
from fewstep.models.blockcausal import check_decode
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
    counts: dict[str, torch.Tensor] | None = None  # [B] each: injected, confirmed, revoked (so far)


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


def _input_embeds(model: DiffusionModel, ids: torch.Tensor, p: int, init: CanvasInit, open_: torch.Tensor,
                  step: int, pick) -> torch.Tensor:
    """Input embeddings [b, T] of ``ids`` [b, T] with the embedding prior mixed in at the positions
    that have one and are still undecided (``open_`` [b, G])."""
    assert init.embeds is not None
    emb = model.embed(ids)  # [b, T, D]
    mask = open_ if init.embed_mask is None else open_ & pick(init.embed_mask.to(open_.device))
    a = init.alpha * (1 - init.alpha_decay) ** step
    target = pick(init.embeds.to(emb.device)).to(emb.dtype)  # [b, G, D]
    mixed = (1 - a) * emb[:, p:] + a * target
    emb[:, p:] = torch.where(mask[..., None], mixed, emb[:, p:])
    return emb


def _apply(tokens: torch.Tensor, state: torch.Tensor, at: torch.Tensor, commit: torch.Tensor | None,
           cand: torch.Tensor | None, revoke: torch.Tensor | None, mask_id: int, step: int,
           only_masked: bool = False) -> None:
    """Apply a decision to a block's views, in place: ``commit`` [B, L] makes positions committed
    (a masked position takes ``cand``, a provisional one keeps its token); ``revoke`` [B, L] sends
    positions back to mask. ``only_masked``: the caller knows every committed position is masked."""
    if commit is not None:
        if cand is not None:
            tokens.copy_(torch.where(commit if only_masked else commit & (state == MASKED), cand, tokens))
        state.masked_fill_(commit, COMMITTED)
        at.masked_fill_(commit, step)
    if revoke is not None:
        tokens.masked_fill_(revoke, mask_id)
        state.masked_fill_(revoke, MASKED)
        at.masked_fill_(revoke, -1)


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
    check_decode(model, cfg.block_length)  # block-causal models: decode blocks within an attention block
    dev = model.device
    ids, att, p = left_pad(prompts, model.pad_id, cfg.gen_length)
    ids, att = ids.to(dev), att.to(dev)
    b, g, mask_id, eos_id = ids.shape[0], cfg.gen_length, model.mask_id, model.eos_id
    gen = ids[:, p:]  # [B, G] view of the canvas, updated in place
    tokens, state = initial_state(b, g, init, mask_id, dev)
    if tokens is None:
        gen.fill_(mask_id)
    else:
        gen.copy_(tokens)
    # the revise stage and its bookkeeping exist only with provisional tokens or bounded revision
    revising = bool((state == PROVISIONAL).any()) or cfg.revise_threshold > 0
    counts: dict[str, torch.Tensor] = {}
    if revising:
        counts = {"injected": (state == PROVISIONAL).sum(1), "confirmed": torch.zeros(b, dtype=torch.long, device=dev),
                  "revoked": torch.zeros(b, dtype=torch.long, device=dev)}
        revisions = torch.zeros((b, g), dtype=torch.long, device=dev)  # revocations of committed tokens
        checked = torch.zeros((b, g), dtype=torch.bool, device=dev)  # provisional tokens the model has judged
        score = torch.zeros((b, g), dtype=torch.float64, device=dev)  # their probability when judged
        groups = torch.arange(g, device=dev) % cfg.verify_groups  # [G] verification group of each position
    prompt_pos = None  # [B, T] what guidance masks (cfg_scale > 0 only)
    if cfg.cfg_scale > 0:
        prompt_pos = torch.zeros_like(ids, dtype=torch.bool)
        prompt_pos[:, :p] = att[:, :p].bool()
    nfe = torch.zeros(b, dtype=torch.long, device=dev)
    committed_at = torch.full((b, g), -1, dtype=torch.long, device=dev)
    generator = _Lazy(lambda: torch.Generator(device=dev).manual_seed(cfg.seed))
    policy = make_policy(cfg)
    uses_progress = getattr(policy, "uses_progress", True)  # progress costs a reduction per step: only if read
    cost = 2 if cfg.cfg_scale > 0 else 1
    kv = None if cfg.cache == "none" else StepCache(model, cfg.cache, cfg.cache_refresh, b, cfg.cfg_scale > 0, dev)
    all_rows = torch.arange(b, device=dev)
    step = 0
    for blk in range(cfg.num_blocks):
        lo, hi = blk * cfg.block_length, (blk + 1) * cfg.block_length
        window = slice(p + lo, p + hi)
        blk_state, blk_tokens, blk_at = state[:, lo:hi], gen[:, lo:hi], committed_at[:, lo:hi]  # views
        policy.start_block(blk_state == MASKED)
        if kv is not None:
            kv.start_block()
        budget = policy.max_steps()
        for s in range(budget):
            masked = blk_state == MASKED  # [B, L]
            rows = masked.any(1)  # [B]
            wanted = policy.rows_needing_forward(s)
            if s == budget - 1:  # the last allowed step completes every undecided row
                rows = undecided(blk_state).any(1)
            elif wanted is not None:
                rows &= wanted
            if revising:  # provisional tokens not yet judged need a verifying forward even without masks
                rows |= ((blk_state == PROVISIONAL) & ~checked[:, lo:hi]).any(1) & ~masked.any(1)
            n_rows = int(rows.sum())
            if n_rows == 0:
                if not undecided(blk_state).any():
                    break  # the block is complete
                continue
            sub = None if n_rows == b else rows.nonzero().squeeze(1)

            def pick(t: torch.Tensor, sub: torch.Tensor | None = sub) -> torch.Tensor:
                return t if sub is None else t[sub]

            embeds = None
            if init is not None and init.embeds is not None:
                embeds = _input_embeds(model, pick(ids), p, init, pick(undecided(state)), step, pick)
            judged = None  # [B, L] provisional positions judged at this step
            x = ids
            if revising:
                judged = blk_state == PROVISIONAL
                if cfg.verify_groups > 1:  # judge one group, fed to the model masked (see DecodeConfig)
                    judged &= groups[lo:hi] == s % cfg.verify_groups
                    x = ids.clone()
                    x[:, p + lo:p + hi].masked_fill_(judged, mask_id)
            guide = None if prompt_pos is None else pick(prompt_pos)
            if kv is None:
                logits = window_logits(model, pick(x), pick(att), guide, window, cfg.cfg_scale, embeds)
            else:  # the cache decides, per row, between a refresh and a window forward
                logits = kv.logits(model, pick(x), pick(att), guide, window, cfg.cfg_scale, embeds, pick(all_rows), s)
            cand, conf, probs = candidates_and_confidence(logits, cfg, eos_id, generator, mask_id)  # [b, L](, V)
            if sub is not None:  # the active rows' results back in full batch shape
                cand = _scatter_rows((b, hi - lo), 0, sub, cand)
                conf = _scatter_rows((b, hi - lo), float("-inf"), sub, conf)
                probs = _scatter_rows((b, hi - lo, probs.shape[-1]), 0.0, sub, probs)
            active = rows[:, None]  # [B, 1]
            last_step = s == budget - 1
            revoke = None
            if revising:
                was_provisional = blk_state == PROVISIONAL
                revoke = torch.zeros_like(masked)
                if not last_step:  # 6. revise: skepticism, prefix verification, bounded revision
                    assert judged is not None
                    tok_p = token_probability(probs, blk_tokens)
                    checked[:, lo:hi] |= judged & active
                    if cfg.verify_prefix:
                        score[:, lo:hi] = torch.where(judged & active, tok_p, score[:, lo:hi])
                        ready = ~((blk_state == PROVISIONAL) & ~checked[:, lo:hi]).any(1) & rows
                        confirm, revoke = verify_prefix(score[:, lo:hi], blk_state, ready, cfg.remask_threshold)
                    else:
                        confirm, revoke = revise(tok_p, blk_state, revisions[:, lo:hi], cfg)
                        confirm, revoke = confirm & active & (judged | (blk_state != PROVISIONAL)), revoke & active
                        revoke &= judged | (blk_state != PROVISIONAL)
                    revisions[:, lo:hi] += revoke & (blk_state == COMMITTED)
                    _apply(blk_tokens, blk_state, blk_at, confirm, None, revoke, mask_id, step)
                todo = undecided(blk_state) & active
                # positions revoked at this step wait for the next forward: their logits came from a
                # context (or an input) that still held the draft
                eligible = (blk_state == MASKED) & active & ~revoke  # [B, L]
            else:  # nothing provisional and no revision: the state is as at the top of the step
                eligible = todo = masked if sub is None else masked & active
            if last_step:  # the loop's bound: complete the block
                commit = todo
            else:  # 5. commit: the strategy's decision
                ctx = StepContext(torch.where(eligible, conf, float("-inf")), cand, eligible, s,
                                  progress(state) if uses_progress else None, eos_id, probs, blk_tokens,
                                  (blk_state == PROVISIONAL) & active if revising else None)
                decision = policy.step(ctx)
                commit = decision.commit & todo
                if decision.edit is not None:  # token editing (block_threshold): committed positions take
                    edit = decision.edit & active & (blk_state == COMMITTED)  # this step's candidate
                    blk_tokens.copy_(torch.where(edit, cand, blk_tokens))
                    commit = commit | edit
                if decision.revoke is not None:
                    extra = decision.revoke & ~commit & active & (blk_state != MASKED)
                    _apply(blk_tokens, blk_state, blk_at, None, None, extra, mask_id, step)
                    revoke = extra if revoke is None else revoke | extra
            _apply(blk_tokens, blk_state, blk_at, commit, cand, None, mask_id, step, only_masked=not revising)
            if revising:  # nothing left to decode in the block: its provisional tokens are kept
                assert revoke is not None
                prov = blk_state == PROVISIONAL
                pending = (blk_state == MASKED) | (prov & ~checked[:, lo:hi])  # [B, L]
                settled = ~pending.any(1, keepdim=True)
                keep = prov & settled & active
                _apply(blk_tokens, blk_state, blk_at, keep, None, None, mask_id, step)
                commit = commit | keep
                counts["confirmed"] += (was_provisional & (blk_state == COMMITTED)).sum(1)
                counts["revoked"] += revoke.sum(1)
            if cost == 1:
                nfe += rows
            else:
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
                                _snap(committed_at), done, _snap(state),
                                {k: _snap(v) for k, v in counts.items()} if counts else None)
            step += 1
            if done:
                return
        if undecided(blk_state).any():
            raise RuntimeError(f"strategy {cfg.strategy!r} left block {blk} undecided after {budget} steps")
    # Unreachable: every block completes within its budget, so the last step returned.
    raise RuntimeError("decode ended without completing the generation")
