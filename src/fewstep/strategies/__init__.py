"""Decoding strategies as small components of the one decode loop.

- scorers (``scorers.py``): confidence per position;
- commit policies, one per file: ``llada`` (fixed schedule), ``threshold``, ``factor``, ``cad``.

:func:`make_policy` builds the policy a configuration names.
"""

from __future__ import annotations

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError
from fewstep.strategies.base import CommitPolicy


def make_policy(cfg: DecodeConfig) -> CommitPolicy:
    from fewstep.strategies import cad, factor, llada, threshold

    if cfg.strategy == "llada":
        return llada.FixedSchedule(cfg.steps_per_block)
    if cfg.strategy == "threshold":
        return threshold.Threshold(cfg.threshold, cfg.block_length)
    if cfg.strategy == "factor":
        return factor.Factor(cfg.factor, cfg.block_length)
    if cfg.strategy == "cad":
        return cad.CAD(cfg.tau, cfg.min_tokens, cfg.max_tokens, cfg.max_steps_per_block, cfg.eos_min_progress,
                       cfg.block_length)
    raise ConfigError(f"strategy {cfg.strategy!r} is not a diffusion commit policy")
