"""Decoding strategies as small components of the one decode loop.

- scorers (``scorers.py``): confidence per position;
- commit policies, one module per strategy: ``llada`` (fixed schedule), ``threshold``, ``factor``,
  ``cad``, ``eb``; plus ``ar`` (greedy decoding of causal models, no policy) and ``uniform_eb``
  (DiffusionGemma's sampler: ``"uniform"`` models, whose undecided positions hold tokens, not masks).

Each strategy module declares ``SUMMARY``, ``Params`` (a frozen dataclass of its parameters that
validates itself), ``policy(params, cfg)`` (a :class:`fewstep.strategies.base.CommitPolicy`),
optionally ``check(params, cfg)`` for rules that involve the loop's settings, and optionally
``MODEL_KIND`` (default ``"diffusion"``; ``ar`` decodes ``"causal"`` models, ``uniform_eb``
``"uniform"`` ones).
:data:`REGISTRY` maps a strategy's name to its module; adding a
strategy is one file and one line here. Importing this package loads no torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from fewstep.errors import ConfigError

REGISTRY: dict[str, str] = {
    "llada": "fewstep.strategies.llada",
    "threshold": "fewstep.strategies.threshold",
    "factor": "fewstep.strategies.factor",
    "factor_prefix": "fewstep.strategies.factor_prefix",
    "cad": "fewstep.strategies.cad",
    "eb": "fewstep.strategies.eb",
    "block_threshold": "fewstep.strategies.block_threshold",
    "ar": "fewstep.strategies.ar",
    "uniform_eb": "fewstep.strategies.uniform_eb",
}


def strategy_module(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])


def model_kind(name: str) -> str:
    """The kind of model strategy ``name`` decodes: ``"diffusion"`` or ``"causal"``."""
    return str(getattr(strategy_module(name), "MODEL_KIND", "diffusion"))


def default_strategy(kind: str) -> str:
    """The strategy a model of ``kind`` decodes with when none is named (the first registered one
    of that kind; for a kind no strategy names, such as the gold model, the first one)."""
    return next((name for name in REGISTRY if model_kind(name) == kind), next(iter(REGISTRY)))


def make_policy(cfg: Any) -> Any:
    """The commit policy of ``cfg.strategy`` with ``cfg``'s parameters."""
    module = strategy_module(cfg.strategy)
    if module.policy is None:
        raise ConfigError(f"strategy {cfg.strategy!r} decodes {model_kind(cfg.strategy)} models: "
                          f"it has no commit policy")
    return module.policy(cfg.params, cfg)


def describe() -> list[dict[str, Any]]:
    """Every strategy with its summary and parameters (name, type, default, range, help), read from
    the same declarations that validation uses."""
    from fewstep.settings import describe as describe_params

    out = []
    for name in REGISTRY:
        module = strategy_module(name)
        out.append({"name": name, "summary": module.SUMMARY, "params": describe_params(module.Params)})
    return out
