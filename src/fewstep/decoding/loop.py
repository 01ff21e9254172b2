"""The decode loop: one streaming generator, in named phases, that every consumer reaches through
the engine (:mod:`fewstep.engine`).

Per row the loop keeps the canvas (prompt, left-padded, then ``gen_length`` positions), each
generation position's state (masked, provisional, committed: :mod:`fewstep.decoding.canvas`), the
step at which it was committed and the row's forward count (NFE), all in one
:class:`~fewstep.decoding.state.DecodeState`. Blocks are decoded left to right; a step of a block is

- **rows**: the rows with work take the forward: a masked position the policy plans to commit
  now, or a draft token not yet judged; at the block's last allowed step every undecided row;
- **forward**: logits of the block's positions only (``window_logits``), from token ids or from
  input embeddings where an embedding prior is active; with a key/value cache
  (:class:`~fewstep.decoding.cache.StepCache`) a row's forward runs only a window of the sequence;
- **candidates**: guidance, EOS penalty, Gumbel noise -> a candidate and a confidence per position;
- **revise** (only with a draft or bounded revision: :class:`~fewstep.decoding.revise.ReviseStage`):
  the model judges draft tokens, confirming or revoking them (``reject=edit``: a rejected one
  takes the step's candidate at once, committed), at every step including the last;
- **commit**: the strategy's policy decides (:class:`fewstep.strategies.base.Decision`); the loop
  bounds it: at the block's last allowed step (``policy.max_steps()``) every undecided position is
  committed (a position revoked at that step takes the step's candidate), and a row whose step
  changed nothing completes its block at once (its next forward would see the same canvas);
- **early stop** (``early_stop``): a row whose decided generation ends in EOS from its first EOS
  on gets EOS in every later position without further forwards;
- **event**: a :class:`StepEvent` (a snapshot only when the consumer asks for every step).

A uniform-state model (DiffusionGemma: undecided positions hold tokens, never masks; policies with
``canvas = "uniform"``, :mod:`fewstep.strategies.uniform_eb`) takes the same phases with two
differences: a block starts from random tokens (or a draft's), and **resample** replaces
candidates, revise and commit: the policy gives every position of the block in the rows that took
the forward its next token, and the rows it stops (all of them at its last step) commit the block.

Shapes: B rows, P padded prompt length, G = gen_length, T = P + G, L block length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from fewstep.config import DecodeConfig
from fewstep.decoding.cache import StepCache
from fewstep.decoding.canvas import COMMITTED, MASKED, PROVISIONAL, CanvasInit, progress, undecided
from fewstep.decoding.revise import ReviseStage
from fewstep.decoding.scoring import LAST, candidates_and_confidence, window_logits
from fewstep.decoding.state import Block, DecodeState, Rows, check_prompts, left_pad
from fewstep.errors import ConfigError
from fewstep.models.adapter import DiffusionModel
from fewstep.models.blockcausal import check_decode
from fewstep.strategies import make_policy, model_kind
from fewstep.strategies.base import StepContext

__all__ = ["LAST", "StepEvent", "candidates_and_confidence", "check_prompts", "decode", "ended_rows", "left_pad"]


@dataclass
class StepEvent:
    """What one step did. Tensors are CPU copies that later steps cannot change."""

    step: int  # global step index (0-based)
    block: int
    committed: torch.Tensor  # [B, G] bool: positions committed at this step (draft tokens, edits, EOS fills too)
    revoked: torch.Tensor  # [B, G] bool: positions sent back to mask at this step (edited ones: in both)
    canvas: torch.Tensor  # [B, G] token ids after the step (mask id where still masked)
    nfe: torch.Tensor  # [B] forward passes so far, per row
    committed_at: torch.Tensor  # [B, G] step at which each position was committed (-1: not yet)
    done: bool  # True on the last event of the decode
    state: torch.Tensor | None = None  # [B, G] int8 position states after the step (canvas.MASKED, ...)
    counts: dict[str, torch.Tensor] | None = None  # [B] each, so far: injected, confirmed, revoked (+ edited)


class Scored(NamedTuple):
    """A step's candidates: [B, L] token ids, [B, L] float64 confidences, [B, L, V] float64 probabilities."""

    cand: torch.Tensor
    conf: torch.Tensor
    probs: torch.Tensor


class Judged(NamedTuple):
    """What the revise stage did: [B, L] draft or committed tokens revoked, [B, L] draft tokens it
    committed (confirmed, or rejected and edited: ``reject=edit``); [B] rows it changed."""

    revoked: torch.Tensor
    committed: torch.Tensor
    touched: torch.Tensor


@dataclass
class Change:
    """What a step did to the active block: [B, L] each."""

    commit: torch.Tensor
    revoke: torch.Tensor | None = None


def decode(model: DiffusionModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
           init: CanvasInit | None = None, snapshots: bool = True) -> Iterator[StepEvent]:
    """Decode a batch of tokenised prompts, yielding a :class:`StepEvent` per step.

    init: the initial canvas (provisional tokens, embedding priors); default all masked.
    snapshots: False yields only the last event (nothing is copied at the other steps)."""
    _check(model, prompts, cfg)
    st = DecodeState.start(model, prompts, cfg.gen_length, init, guided=cfg.cfg_scale > 0)
    policy = make_policy(cfg)
    uniform = getattr(policy, "canvas", "mask") == "uniform"
    if uniform:  # a draft is the starting canvas itself: judged as every visible token is, no revise stage
        st.state.masked_fill_(st.state == PROVISIONAL, MASKED)
    revise = ReviseStage.build(cfg, st.state, st.mask_id)
    kv = None if cfg.cache == "none" else StepCache(model, cfg.cache, cfg.cache_refresh, st.batch,
                                                    cfg.cfg_scale > 0, st.ids.device)
    rng = _Lazy(lambda: torch.Generator(device=st.ids.device).manual_seed(cfg.seed))
    for index in range(cfg.num_blocks):
        blk = st.block(index, cfg.block_length)
        policy.start_block(blk.state == MASKED)
        if uniform:  # open positions that hold no draft token start as random tokens
            policy.start_canvas(blk.tokens, undecided(blk.state), model.embedding_table().shape[0])
        if kv is not None:
            kv.start_block()
        budget = policy.max_steps()
        for s in range(budget):
            last = s == budget - 1
            # rows: who takes this forward
            rows = _rows_with_work(blk, policy, revise, s, last)
            if rows.count == 0:
                if not undecided(blk.state).any():
                    break
                continue
            # forward and candidates
            x, judging = (st.ids, None) if revise is None else revise.model_input(st.ids, blk, s)
            logits = _forward(model, st, rows, x, blk, cfg, kv, init, s, policy if uniform else None)
            if uniform:  # every position of the block judged and given its next token; stopped rows commit
                change = _resample(policy, st, blk, logits, rows, s)
            else:
                scored = Scored(*candidates_and_confidence(logits, cfg, st.eos_id, rng, st.mask_id))
                scored = Scored(rows.scatter(scored.cand, 0), rows.scatter(scored.conf, float("-inf")),
                                rows.scatter(scored.probs, 0.0))
                # revise: judge draft tokens (what it revokes is decoded from the next forward on; at the
                # block's last step, or at once with reject=edit, it takes this step's candidate)
                judged = None
                if revise is not None:
                    assert judging is not None
                    judged = Judged(*revise.judge(blk, scored.probs, scored.cand, judging, rows.mask, st.step))
                # commit
                change = _commit(policy, st, blk, scored, rows.mask, judged, revise, s, last)
            # count the forward
            st.nfe += rows.mask if cfg.cfg_scale == 0 else rows.mask.long() * 2  # guidance: two forwards
            # early stop, then the event
            stopped = _early_stop(st, blk) if cfg.early_stop else None
            done = st.done()
            if snapshots or done:
                yield _event(st, blk, change, stopped, revise, done)
            st.step += 1
            if done:
                return
        if undecided(blk.state).any():
            raise RuntimeError(f"strategy {cfg.strategy!r} left block {index} undecided after {budget} steps")
    raise RuntimeError("decode ended without completing the generation")  # every block completes: unreachable


def _check(model: DiffusionModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig) -> None:
    kind, have = model_kind(cfg.strategy), getattr(model, "kind", "diffusion")
    if kind != "diffusion" or have == "uniform":  # a uniform-state model decodes with its own strategies only
        if kind != have:
            raise ConfigError(f"strategy {cfg.strategy!r} needs a {_KINDS.get(kind, kind)} model; {model.name} is a "
                              f"{_KINDS.get(have, have)} model (fewstep list strategies)")
    elif getattr(model, "mask_id", -1) < 0:
        raise ConfigError(f"{model.name} is not a masked diffusion model")
    check_prompts(model, prompts, cfg.gen_length)
    check_decode(model, cfg.block_length)  # block-causal models: decode blocks within an attention block


_KINDS = {"diffusion": "masked diffusion", "uniform": "uniform-state diffusion (no mask token)"}


def _rows_with_work(blk: Block, policy, revise: ReviseStage | None, s: int, last: bool) -> Rows:
    """[B] rows that take the forward of step ``s`` of the block."""
    if last:  # the last allowed step completes every undecided row
        rows = undecided(blk.state).any(1)
    else:
        masked = blk.state == MASKED  # [B, L]
        rows = masked.any(1)
        wanted = policy.rows_needing_forward(s, masked)
        if wanted is not None:
            rows &= wanted
    if revise is not None:  # a draft token not yet judged needs a forward whatever the policy plans
        rows |= revise.unjudged(blk).any(1)
    return Rows(rows)


def _forward(model: DiffusionModel, st: DecodeState, rows: Rows, x: torch.Tensor, blk: Block, cfg: DecodeConfig,
             kv: StepCache | None, init: CanvasInit | None, s: int, uniform=None) -> torch.Tensor:
    """Logits [b, L, V] of the block for the rows that take the forward (``uniform``: the policy of
    a uniform-state model, which conditions each step on the previous step's processed logits)."""
    if uniform is not None:  # fewstep.models.diffusion_gemma
        conditioned: Any = model
        return conditioned.logits(input_ids=rows.pick(x), attention_mask=rows.pick(st.att), positions=blk.window,
                                  self_conditioning=uniform.conditioning(rows.index, s)).float()
    embeds = None
    if init is not None and init.embeds is not None:
        embeds = _prior_embeds(model, rows.pick(x), st.p, init, rows.pick(undecided(st.state)), s, rows)
    guide = None if st.guide is None else rows.pick(st.guide)
    if kv is None:
        return window_logits(model, rows.pick(x), rows.pick(st.att), guide, blk.window, cfg.cfg_scale, embeds)
    # the cache decides, per row, between a refresh and a window forward
    return kv.logits(model, rows.pick(x), rows.pick(st.att), guide, blk.window, cfg.cfg_scale, embeds, rows.index, s)


def _prior_embeds(model: DiffusionModel, ids: torch.Tensor, p: int, init: CanvasInit, open_: torch.Tensor, s: int,
                  rows: Rows) -> torch.Tensor:
    """Input embeddings [b, T] of ``ids`` [b, T] with the embedding prior mixed in at the positions
    that have one and are still undecided (``open_`` [b, G]); its weight decays with the step ``s``
    of the block, so every block starts from ``alpha``."""
    assert init.embeds is not None
    emb = model.embed(ids)  # [b, T, D]
    mask = open_ if init.embed_mask is None else open_ & rows.pick(init.embed_mask.to(open_.device))
    a = init.alpha * (1 - init.alpha_decay) ** s
    target = rows.pick(init.embeds.to(emb.device)).to(emb.dtype)  # [b, G, D]
    mixed = (1 - a) * emb[:, p:] + a * target
    emb[:, p:] = torch.where(mask[..., None], mixed, emb[:, p:])
    return emb


def _commit(policy, st: DecodeState, blk: Block, scored: Scored, rows: torch.Tensor, judged: Judged | None,
            revise: ReviseStage | None, s: int, last: bool) -> Change:
    """The commit phase: the policy's decision, bounded by the loop, applied to the block."""
    todo = undecided(blk.state) & rows[:, None]  # [B, L]
    extra = None
    if last:
        commit = todo
    else:
        commit, extra = _decide(policy, st, blk, scored, rows, todo, judged, s)
        if revise is not None and extra is not None:
            revise.counts["revoked"] += extra.sum(1)
        if revise is not None or extra is not None or not policy.always_commits:
            commit = commit | _stuck(rows, commit, extra, judged, revise, blk)[:, None] & todo
    blk.apply(commit, scored.cand, None, st.mask_id, st.step, keep_provisional=revise is not None)
    if revise is not None:
        commit = commit | revise.settle(blk, rows, st.step)
    if judged is None:
        return Change(commit, extra)
    return Change(commit | judged.committed, judged.revoked if extra is None else judged.revoked | extra)


def _resample(policy, st: DecodeState, blk: Block, logits: torch.Tensor, rows: Rows, s: int) -> Change:
    """The commit phase on a uniform-state canvas (``policy.canvas == "uniform"``): the policy
    gives every position of the block in the rows that took the forward its next token; the rows
    it stops (all of them at the block's last step) commit the block as it now stands."""
    tokens, stop = policy.resample(logits, rows.index, s, st.eos_id)  # [b, L], [b]
    blk.tokens.copy_(torch.where(rows.mask[:, None], rows.scatter(tokens, 0), blk.tokens))
    commit = rows.scatter(stop, False)[:, None] & undecided(blk.state)
    blk.apply(commit, None, None, st.mask_id, st.step)
    return Change(commit)


def _decide(policy, st: DecodeState, blk: Block, scored: Scored, rows: torch.Tensor, todo: torch.Tensor,
            judged: Judged | None, s: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ask the policy; apply its edits and revocations. ``todo`` [B, L]: the undecided positions of
    the rows that took the forward; ``judged``: the revise stage's work (None without one). ->
    positions to commit [B, L], revoked [B, L] or None."""
    active = rows[:, None]  # [B, 1]
    eligible = todo  # [B, L] without a revise stage every undecided position is masked
    if judged is not None:  # positions revoked at this step wait for the next forward: their logits saw the draft
        eligible = (blk.state == MASKED) & active & ~judged.revoked
    decision = policy.step(StepContext(torch.where(eligible, scored.conf, float("-inf")), scored.cand, eligible, s,
                                       progress(st.state) if policy.uses_progress else None, st.eos_id, scored.probs,
                                       blk.tokens, (blk.state == PROVISIONAL) & active if judged is not None else None))
    commit = decision.commit & todo
    if decision.edit is not None:  # token editing: committed positions take this step's candidate
        edit = decision.edit & active & (blk.state == COMMITTED)
        blk.tokens.copy_(torch.where(edit, scored.cand, blk.tokens))
        commit = commit | edit
    extra = None
    if decision.revoke is not None:
        extra = decision.revoke & ~commit & active & (blk.state != MASKED)
        blk.apply(None, None, extra, st.mask_id, st.step)
    return commit, extra


def _stuck(rows: torch.Tensor, commit: torch.Tensor, extra: torch.Tensor | None, judged: Judged | None,
           revise: ReviseStage | None, blk: Block) -> torch.Tensor:
    """[B] rows whose step changed nothing: no commit, no revocation, no draft token judged for the
    first time, and none left to judge. Their next forward would see the same canvas (greedy: the
    same logits), so the loop completes their block now, as the last step would."""
    stuck = rows & ~commit.any(1)
    if extra is not None:
        stuck &= ~extra.any(1)
    if judged is not None:
        stuck &= ~judged.touched
    if revise is not None:
        stuck &= ~revise.unjudged(blk).any(1)
    return stuck


def _early_stop(st: DecodeState, blk: Block) -> torch.Tensor | None:
    """Rows whose generation up to the end of the block is decided and, from its first EOS on, all
    EOS: every later position gets EOS, committed now. -> [B, G] the positions filled, or None."""
    g = st.state.shape[1]
    if blk.hi >= g:
        return None
    eos_id = st.eos_id
    stop = ~undecided(st.state[:, :blk.hi]).any(1) & ended_rows(st.gen, blk.hi, eos_id) & \
        undecided(st.state[:, blk.hi:]).any(1)
    if not stop.any():
        return None
    stopped = stop[:, None] & undecided(st.state)  # [B, G]
    st.gen.masked_fill_(stopped, eos_id)
    st.state.masked_fill_(stopped, COMMITTED)
    st.committed_at.masked_fill_(stopped, st.step)
    return stopped


def ended_rows(gen: torch.Tensor, upto: int, eos_id: int) -> torch.Tensor:
    """[B] bool: rows whose gen[:, :upto] has an EOS and is all EOS from the first EOS on."""
    is_eos = gen[:, :upto] == eos_id  # [B, u]
    after_first = is_eos.long().cumsum(1) > 0  # [B, u] at or after the first EOS
    return is_eos.any(1) & (is_eos | ~after_first).all(1)


def _event(st: DecodeState, blk: Block, change: Change, stopped: torch.Tensor | None, revise: ReviseStage | None,
           done: bool) -> StepEvent:
    b, g = st.state.shape
    commit = torch.zeros((b, g), dtype=torch.bool, device=st.state.device)
    commit[:, blk.lo:blk.hi] = change.commit
    if stopped is not None:
        commit |= stopped
    revoke = torch.zeros((b, g), dtype=torch.bool, device=st.state.device)
    if change.revoke is not None:
        revoke[:, blk.lo:blk.hi] = change.revoke
    counts = None if revise is None else {k: _snap(v) for k, v in revise.counts.items()}
    return StepEvent(st.step, blk.index, _snap(commit), _snap(revoke), _snap(st.gen), _snap(st.nfe),
                     _snap(st.committed_at), done, _snap(st.state), counts)


def _snap(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that later steps cannot mutate (``.cpu()`` alone aliases CPU tensors)."""
    return t.detach().to("cpu", copy=True)


class _Lazy:
    """A value made on first use (the decode's random generator: seeding one costs more than a
    greedy step's own work, and greedy decoding never draws from it)."""

    def __init__(self, make):
        self.make, self.value = make, None

    def __call__(self) -> torch.Generator:
        if self.value is None:
            self.value = self.make()
        return self.value
