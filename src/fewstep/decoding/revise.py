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

Shapes: B rows, L block length.
"""

from __future__ import annotations

import torch

from fewstep.decoding.canvas import COMMITTED, PROVISIONAL


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


def verify_prefix(score: torch.Tensor, state: torch.Tensor, ready: torch.Tensor, threshold: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    """score [B, L] (the model's probability of each judged draft token), state [B, L], ready [B]
    (rows whose draft tokens in the block have all been judged) -> confirm, revoke [B, L]."""
    provisional = (state == PROVISIONAL) & ready[:, None]
    failed = provisional & (score < threshold)
    after_failure = failed.long().cumsum(1) > 0  # [B, L] at or after the first failure
    return provisional & ~after_failure, provisional & after_failure
