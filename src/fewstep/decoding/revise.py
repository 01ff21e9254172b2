"""The revise stage of a step: which provisional or committed positions the model confirms or
sends back to mask, from its probability for the token each one holds.

- prior skepticism (warm starts, arXiv 2512.19004): a provisional token (injected from a draft)
  is revoked when the diffusion model's probability for it is below ``remask_threshold``, and
  confirmed (committed as it is) once that probability reaches ``confirm_threshold``;
- bounded revision: a committed token is revoked when the model's probability for it falls below
  ``revise_threshold``, at most ``max_revisions`` times per position. Rationale: a draft's error
  propagates (a wrong result copied into the next equation looks right in context); once the
  first error is repaired, the copy becomes improbable and is revised in turn. The per-position
  bound and the loop's completion of every block at its last allowed step make decoding terminate.

- prefix verification (``verify_prefix``): a draft is judged as a whole, the way speculative
  decoding judges a drafted continuation: once every draft token of the block has been judged, the
  longest prefix of draft tokens whose probabilities all reach ``remask_threshold`` is confirmed
  and every draft token from the first failure on is revoked. Rationale: a drafter writes left to
  right, so its tokens after an error were conditioned on it (a wrong result copied into the next
  equation is consistent with its context and would pass a per-token check); revoking the whole
  suffix repairs chained errors instead of locking them in.

- token editing (``reject=edit``): a draft token the model rejects (per token, or in a revoked
  suffix) takes the step's candidate at once, committed, instead of going back to mask, where the
  model's probability for the candidate reaches ``edit_min_confidence`` (else it is masked as with
  ``reject=mask``). With ``remask_threshold = confirm_threshold`` and ``verify_groups=1`` the first
  forward judges every draft token in place: accepted ones committed, rejected ones edited. Counts:
  an edited token is counted as revoked and as edited. Committed tokens revoked by bounded
  revision go back to mask whatever ``reject`` says (it concerns draft tokens).

Shapes: B rows, L block length.
"""

from __future__ import annotations

import torch

from fewstep.decoding.canvas import COMMITTED, MASKED, PROVISIONAL


def token_probability(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """probs [B, L, V] float64, tokens [B, L] -> the probability of each current token [B, L]."""
    return probs.gather(-1, tokens.clamp(0, probs.shape[-1] - 1)[..., None]).squeeze(-1)


def revise(token_prob: torch.Tensor, state: torch.Tensor, revisions: torch.Tensor, cfg) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """-> confirm [B, L] (provisional -> committed), revoke [B, L] (provisional or committed -> masked)."""
    provisional = state == PROVISIONAL
    revoke = provisional & (token_prob < cfg.remask_threshold)
    confirm = provisional & (token_prob >= cfg.confirm_threshold) & ~revoke
    if cfg.revise_threshold > 0:
        revoke |= (state == COMMITTED) & (token_prob < cfg.revise_threshold) & (revisions < cfg.max_revisions)
    return confirm, revoke


def edits(rejected: torch.Tensor, cand: torch.Tensor, probs: torch.Tensor, cfg) -> torch.Tensor:
    """rejected [B, L] (draft tokens revoked at this step), cand [B, L], probs [B, L, V] -> [B, L]
    those that take their candidate at once (``reject=edit``, where the model's probability for
    the candidate reaches ``edit_min_confidence``); the others go back to mask. With
    ``verify_prefix`` only the first rejected token of a row is edited: the candidates of the
    suffix after it were computed from a canvas that still held the rejected draft (a wrong
    result and its copies), so they are decoded again, conditioned on the repaired token."""
    if cfg.reject != "edit":
        return torch.zeros_like(rejected)
    if cfg.verify_prefix:
        rejected = rejected & (rejected.long().cumsum(1) == 1)  # [B, L] the first rejected token
    if cfg.edit_min_confidence > 0:
        return rejected & (token_probability(probs, cand) >= cfg.edit_min_confidence)
    return rejected


def verify_prefix(score: torch.Tensor, state: torch.Tensor, ready: torch.Tensor, threshold: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    """score [B, L] (the model's probability of each judged draft token), state [B, L], ready [B]
    (rows whose draft tokens in the block have all been judged) -> confirm, revoke [B, L]."""
    provisional = (state == PROVISIONAL) & ready[:, None]
    failed = provisional & (score < threshold)
    after_failure = failed.long().cumsum(1) > 0  # [B, L] at or after the first failure
    return provisional & ~after_failure, provisional & after_failure


class ReviseStage:
    """The revise stage of the loop, built only when a decode has draft tokens or bounded revision
    (as :class:`fewstep.decoding.cache.StepCache` is built only with a cache). It keeps, per
    position, whether the model has judged its draft token, the probability it gave it, and how
    often a committed token was revoked; and per row the counts results report.

    Per step: :meth:`model_input` (which draft tokens are judged, fed masked with ``verify_groups``
    > 1), :meth:`judge` (confirm, revoke and edit from the step's probabilities and candidates, at
    every step including the block's last, so no draft token is returned unjudged), :meth:`settle` (a block with nothing
    left to decode keeps its judged draft tokens). Shapes: B rows, G generation, L block length.
    """

    def __init__(self, cfg, state: torch.Tensor, mask_id: int):
        b, g = state.shape
        dev = state.device
        self.cfg, self.mask_id = cfg, mask_id
        zeros = torch.zeros(b, dtype=torch.long, device=dev)
        # per row, what results report (GenerationResult); with reject=edit, edited too: a rejected
        # draft token that took its candidate counts as revoked and as edited, never as confirmed
        self.counts = {"injected": (state == PROVISIONAL).sum(1), "confirmed": zeros, "revoked": zeros.clone()}
        if cfg.reject == "edit":
            self.counts["edited"] = zeros.clone()
        self.revisions = torch.zeros((b, g), dtype=torch.long, device=dev)  # revocations of committed tokens
        self.checked = torch.zeros((b, g), dtype=torch.bool, device=dev)  # draft tokens the model has judged
        self.score = torch.zeros((b, g), dtype=torch.float64, device=dev)  # their probability when judged
        self.groups = torch.arange(g, device=dev) % cfg.verify_groups  # [G] verification group of each position
        self.was_provisional: torch.Tensor | None = None  # [B, L] at the start of the step
        self.rejected: torch.Tensor | None = None  # [B, L] draft tokens rejected at the step

    @classmethod
    def build(cls, cfg, state: torch.Tensor, mask_id: int) -> ReviseStage | None:
        if bool((state == PROVISIONAL).any()) or cfg.revise_threshold > 0:
            return cls(cfg, state, mask_id)
        return None

    def unjudged(self, blk) -> torch.Tensor:
        """[B, L] draft tokens of the block the model has not judged yet."""
        return (blk.state == PROVISIONAL) & ~self.checked[:, blk.lo:blk.hi]

    def model_input(self, ids: torch.Tensor, blk, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the model's input ids [B, T] and the draft tokens judged at step ``s`` of the block [B, L]."""
        self.was_provisional = blk.state == PROVISIONAL
        self.rejected = torch.zeros_like(self.was_provisional)
        judged = self.was_provisional
        if self.cfg.verify_groups == 1:
            return ids, judged
        judged = judged & (self.groups[blk.lo:blk.hi] == s % self.cfg.verify_groups)
        x = ids.clone()
        x[:, blk.window].masked_fill_(judged, self.mask_id)
        return x, judged

    def judge(self, blk, probs: torch.Tensor, cand: torch.Tensor, judged: torch.Tensor, rows: torch.Tensor,
              step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Confirm, revoke and (``reject=edit``) edit from ``probs`` [B, L, V] and the step's
        candidates ``cand`` [B, L] in the rows that took the forward (``rows`` [B]), in place.
        -> revoked [B, L] (edited positions included), committed [B, L] (draft tokens confirmed,
        and rejected ones that took their candidate), and [B] the rows where the stage changed anything."""
        lo, hi, active = blk.lo, blk.hi, rows[:, None]
        new = judged & active & ~self.checked[:, lo:hi]
        self.checked[:, lo:hi] |= judged & active
        confirm, revoke = self._verdicts(blk, token_probability(probs, blk.tokens), judged, rows)
        self.revisions[:, lo:hi] += revoke & (blk.state == COMMITTED)
        self.rejected = revoke & (blk.state == PROVISIONAL)
        edit = edits(self.rejected, cand, probs, self.cfg)
        blk.apply(confirm, None, revoke, self.mask_id, step)
        blk.apply(edit, cand, None, self.mask_id, step)  # a revoked position is masked now: it takes cand
        self.counts["revoked"] += revoke.sum(1)
        if "edited" in self.counts:
            self.counts["edited"] += edit.sum(1)
        return revoke, confirm | edit, (new | confirm | revoke).any(1)

    def _verdicts(self, blk, tok_p: torch.Tensor, judged: torch.Tensor, rows: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """-> confirm, revoke [B, L]: per token, or for the block's draft as a whole (``verify_prefix``)."""
        cfg, lo, hi, active = self.cfg, blk.lo, blk.hi, rows[:, None]
        if cfg.verify_prefix:
            score = self.score[:, lo:hi]
            score.copy_(torch.where(judged & active, tok_p, score))
            ready = ~self.unjudged(blk).any(1) & rows
            return verify_prefix(score, blk.state, ready, cfg.remask_threshold)
        confirm, revoke = revise(tok_p, blk.state, self.revisions[:, lo:hi], cfg)
        own = active & (judged | (blk.state != PROVISIONAL))  # a draft token is judged in its group's step
        return confirm & own, revoke & own

    def settle(self, blk, rows: torch.Tensor, step: int) -> torch.Tensor:
        """Rows with nothing left to decode or judge in the block keep their draft tokens (they
        become committed). -> [B, L] the positions committed so."""
        prov = blk.state == PROVISIONAL
        pending = (blk.state == MASKED) | (prov & ~self.checked[:, blk.lo:blk.hi])  # [B, L]
        keep = prov & ~pending.any(1, keepdim=True) & rows[:, None]
        blk.apply(keep, None, None, self.mask_id, step)
        assert self.was_provisional is not None and self.rejected is not None
        # kept draft tokens: committed now and not rejected at this step (an edited one, or one revoked
        # at the block's last step, holds the step's candidate)
        self.counts["confirmed"] += (self.was_provisional & (blk.state == COMMITTED) & ~self.rejected).sum(1)
        return keep
