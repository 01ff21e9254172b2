"""Decoding configuration: the loop's settings plus the active strategy's parameters.

``DecodeConfig`` is a frozen dataclass. Its fields are the settings of the decode loop (the same
for every strategy); ``params`` holds the parameters of the active strategy, a frozen dataclass
declared in the strategy's own module (:mod:`fewstep.strategies`). The constructor takes both
flat, by name, and reads a strategy parameter back as an attribute::

    cfg = DecodeConfig(strategy="threshold", threshold=0.8, gen_length=24)
    cfg.threshold                                   # 0.8
    dataclasses.replace(cfg, strategy="cad", tau=0.9)

A parameter of another strategy is an error that names the strategy (``DecodeConfig(strategy=
"llada", tau=0.5)``), as is any value out of range. :func:`override` applies ``key=value``
strings from the CLI. Every value is checked where it is made, with a message that names it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from fewstep.errors import ConfigError

REMASKING = ("low_confidence", "random", "margin", "entropy")
EOS_CONFIDENCE = ("keep", "last")
INIT = ("mask", "inject", "interpolate")
CACHE = ("none", "prefix", "dual")


@dataclass(frozen=True, init=False)
class DecodeConfig:
    """How to decode.

    strategy: the commit policy (``fewstep list strategies``): ``llada`` (fixed linear schedule of
        ``steps``), ``threshold``, ``factor`` (Fast-dLLM), ``cad`` (CD4LM), ``eb`` (entropy-bounded);
        ``ar``: greedy autoregressive decoding of a causal model (the drafter ``tiny-ar``).
    gen_length: tokens in the generation region (for ``ar``: the most new tokens).
    block_length: semi-autoregressive block size; ``gen_length`` must be a multiple of it.
    temperature: 0 is greedy; > 0 adds Gumbel noise (in float64) to the logits.
    remasking: the confidence score: ``low_confidence`` (probability of the candidate),
        ``margin`` (top1 - top2), ``entropy`` (negative entropy) or ``random``.
    cfg_scale: classifier-free guidance scale s (0 disables it; each step then costs 2 forwards).
    seed: seeds every random choice of the decode (noise, random remasking).
    early_stop: once a completed block leaves the generation ending in EOS from its first EOS
        on, fill every later block with EOS without further forwards (see decoding.loop).
    eos_logit_penalty: subtracted from the EOS logit before choosing candidates (0: off).
    eos_confidence: ``keep``, or ``last``: EOS candidates get a confidence below every other
        candidate (-1e30, still finite), so they are committed after every other candidate
        (LLaDA's appendix B.4 advice for long answers).
    drafter: warm starts (:mod:`fewstep.drafting`): a causal LM (bundled name or directory) that
        answers first; empty: none.
    init: how the drafter's answer starts the canvas: ``mask`` (no warm start), ``inject`` (draft
        tokens as provisional tokens), ``interpolate`` (input embedding (1 - alpha) * E[mask] +
        alpha * E[draft] at a masked position until it is committed).
    rho: each draft position is kept with probability rho (injection dropout 1 - rho), seeded per
        prompt, so a prompt's canvas does not depend on its batch.
    alpha, alpha_decay: interpolation weight, multiplied by (1 - alpha_decay) at every step.
    draft_min_confidence: calibrated injection: keep only draft tokens whose drafter probability
        is at least this (0: off).
    drafter_max_tokens: the drafter's token budget (0: its model directory's gen_length, else gen_length).
    remask_threshold: prior skepticism: a provisional token goes back to mask when the diffusion
        model's probability for it falls below this after a forward (0: never).
    confirm_threshold: a provisional token is committed once that probability reaches this (1:
        only when nothing else is left to decode in its block).
    revise_threshold, max_revisions: bounded revision: a committed token goes back to mask when
        the model's probability for it falls below revise_threshold (0: off), at most
        max_revisions times per position.
    verify_groups: how provisional tokens are judged. 1: from the model's output at the visible
        token (the paper's skepticism). k > 1: at step s the provisional positions i with
        i % k == s % k are fed to the model as masks and judged by its prediction there, the rest
        stay visible as context; every draft token is judged within k forwards. Rationale: a masked
        diffusion model is trained to predict masked positions only, so its output at a visible
        token is not a calibrated probability of that token; its prediction at a masked one is.
    verify_prefix: judge a block's draft as a whole once all of it has been judged: confirm the
        longest prefix whose tokens reach remask_threshold, revoke the rest (chained errors are
        repaired, not locked in; :mod:`fewstep.decoding.revise`).
    cache: the key/value cache (Fast-dLLM's approximate cache; models that support one):
        ``none`` (every step runs the whole sequence), ``prefix`` (a step runs the active block and
        everything after it; the prompt and the finished blocks come from the cache), ``dual``
        (a step runs the active block only; the positions after it come from the cache too).
    cache_refresh: within a block, rerun the whole sequence and refresh the cache every this many
        steps (0: only at the block's first step, as Fast-dLLM; 1: every step, which is exactly
        the uncached decode).
    params: the active strategy's parameters (e.g. ``threshold``; ``steps`` for llada).
    """

    strategy: str = "llada"
    gen_length: int = 24
    block_length: int = 24
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    seed: int = 0
    early_stop: bool = False
    eos_logit_penalty: float = 0.0
    eos_confidence: str = "keep"
    drafter: str = ""
    init: str = "mask"
    rho: float = 1.0
    alpha: float = 0.5
    alpha_decay: float = 0.0
    draft_min_confidence: float = 0.0
    drafter_max_tokens: int = 0
    remask_threshold: float = 0.0
    confirm_threshold: float = 1.0
    revise_threshold: float = 0.0
    max_revisions: int = 1
    verify_groups: int = 1
    verify_prefix: bool = False
    cache: str = "none"
    cache_refresh: int = 0
    params: Any = None

    def __init__(self, **kw: Any) -> None:
        params = kw.pop("params", None)
        for f in loop_fields():
            object.__setattr__(self, f.name, kw.pop(f.name, f.default))
        _check_loop(self)
        module = _strategy(self.strategy)
        if params is not None and not isinstance(params, module.Params):
            params = None  # the strategy changed (dataclasses.replace): its parameters start from defaults
        unknown = sorted(set(kw) - {f.name for f in fields(module.Params)})
        if unknown:
            raise ConfigError(_not_a_param(self.strategy, unknown[0]))
        try:
            params = dataclasses.replace(params, **kw) if params is not None else module.Params(**kw)
        except TypeError as e:  # a dataclass rejects an argument: already named above; keep the line short
            raise ConfigError(f"{self.strategy}: {e}") from None
        object.__setattr__(self, "params", params)
        if self.strategy != "ar" and hasattr(module, "check"):
            module.check(params, self)

    def __getattr__(self, name: str) -> Any:
        """A parameter of the active strategy, read as ``cfg.threshold``."""
        if name == "params" or name.startswith("__"):
            raise AttributeError(name)
        params = self.__dict__.get("params")
        if params is not None and name in {f.name for f in fields(params)}:
            return getattr(params, name)
        raise AttributeError(f"{type(self).__name__!r} of strategy {self.__dict__.get('strategy')!r} has no "
                             f"setting {name!r}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return int(self.params.steps) // self.num_blocks

    def to_dict(self) -> dict[str, Any]:
        """The loop's settings and the active strategy's parameters, flat (what result files record)."""
        d = {f.name: getattr(self, f.name) for f in loop_fields()}
        d.update(dataclasses.asdict(self.params))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeConfig:
        """A config from a recorded dict, ignoring the keys that belong to other strategies (result
        files written before the strategy registry recorded every strategy's fields)."""
        return cls(**{k: v for k, v in d.items() if k in setting_names(d.get("strategy", "llada"))})


def loop_fields() -> list[dataclasses.Field]:
    return [f for f in fields(DecodeConfig) if f.name != "params"]


def _strategy(name: str):
    from fewstep.strategies import strategy_module

    return strategy_module(name)


def setting_names(strategy: str) -> list[str]:
    """The ``--set`` keys of a strategy: the loop's settings, then its parameters."""
    return [f.name for f in loop_fields()] + [f.name for f in fields(_strategy(strategy).Params)]


def _not_a_param(strategy: str, key: str) -> str:
    from fewstep.strategies import REGISTRY

    owners = [s for s in REGISTRY if key in {f.name for f in fields(_strategy(s).Params)}]
    where = f" (a parameter of {', '.join(owners)})" if owners else ""
    return (f"strategy {strategy!r} has no setting {key!r}{where}; its settings: "
            f"{', '.join(setting_names(strategy))}")


def _check_loop(cfg: DecodeConfig) -> None:
    for f in loop_fields():
        value, kind = getattr(cfg, f.name), str(f.type)
        if (isinstance(value, bool) and kind != "bool") or not isinstance(value, _TYPES[kind]):
            raise ConfigError(f"{f.name} must be of type {kind}, got {value!r}")
    if not isinstance(cfg.strategy, str):
        raise ConfigError(f"strategy must be a name, got {cfg.strategy!r}")
    if cfg.gen_length < 1:
        raise ConfigError(f"gen_length must be >= 1, got {cfg.gen_length}")
    if cfg.strategy == "ar":
        return
    if cfg.block_length < 1:
        raise ConfigError(f"block_length must be >= 1, got {cfg.block_length}")
    if cfg.gen_length % cfg.block_length:
        raise ConfigError(f"gen_length ({cfg.gen_length}) must be a multiple of block_length ({cfg.block_length})")
    _in_range("temperature", cfg.temperature, 0, None)
    _in_range("cfg_scale", cfg.cfg_scale, 0, None)
    _in_range("eos_logit_penalty", cfg.eos_logit_penalty, 0, None)
    if cfg.remasking not in REMASKING:
        raise ConfigError(f"remasking must be one of {', '.join(REMASKING)}, got {cfg.remasking!r}")
    if cfg.eos_confidence not in EOS_CONFIDENCE:
        raise ConfigError(f"eos_confidence must be one of {', '.join(EOS_CONFIDENCE)}, got {cfg.eos_confidence!r}")
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed must be in [0, 2**63), got {cfg.seed}")
    if cfg.init not in INIT:
        raise ConfigError(f"init must be one of {', '.join(INIT)}, got {cfg.init!r}")
    if cfg.init != "mask" and not cfg.drafter:
        raise ConfigError(f"init={cfg.init} needs a drafter (--drafter NAME_OR_PATH or --set drafter=...)")
    for name in ("rho", "alpha", "alpha_decay", "draft_min_confidence", "remask_threshold", "confirm_threshold",
                 "revise_threshold"):
        _in_range(name, getattr(cfg, name), 0, 1)
    if cfg.drafter_max_tokens < 0 or cfg.max_revisions < 0:
        raise ConfigError("drafter_max_tokens and max_revisions must be >= 0")
    if cfg.verify_groups < 1:
        raise ConfigError(f"verify_groups must be >= 1, got {cfg.verify_groups}")
    if cfg.cache not in CACHE:
        raise ConfigError(f"cache must be one of {', '.join(CACHE)}, got {cfg.cache!r}")
    if cfg.cache_refresh < 0:
        raise ConfigError(f"cache_refresh must be >= 0, got {cfg.cache_refresh}")
    if cfg.remask_threshold > cfg.confirm_threshold:
        raise ConfigError(f"remask_threshold ({cfg.remask_threshold}) must not exceed confirm_threshold "
                          f"({cfg.confirm_threshold})")


def _in_range(name: str, value: float, lo: float, hi: float | None, open_low: bool = False) -> None:
    bad = not math.isfinite(value) or (value <= lo if open_low else value < lo)
    if bad or (hi is not None and value > hi):
        low = f"({lo}" if open_low else f"[{lo}"
        high = f"{hi}]" if hi is not None else "inf)"
        raise ConfigError(f"{name} must be in {low}, {high}, got {value}")


_TYPES: dict[str, Any] = {"int": int, "float": (int, float), "str": str, "bool": bool, "Any": object}


def _field_kind(strategy: str, name: str) -> str:
    for f in [*loop_fields(), *fields(_strategy(strategy).Params)]:
        if f.name == name:
            return str(f.type)
    raise ConfigError(_not_a_param(strategy, name))


def _parse_value(kind: str, name: str, text: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{name} expects a {kind}, got {text!r}") from None
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} expects true or false, got {text!r}")
    return text


def override(cfg: DecodeConfig, assignments: list[str] | tuple[str, ...] | dict[str, Any]) -> DecodeConfig:
    """Apply ``["key=value", ...]`` (strings, parsed by the setting's type) or a dict of values.
    ``strategy`` is applied first, so the other keys are checked against the new strategy."""
    items = list(assignments.items()) if isinstance(assignments, dict) else [split_assignment(a) for a in assignments]
    strategy = next((str(v) for k, v in items if k == "strategy"), cfg.strategy)
    _strategy(strategy)
    values: dict[str, Any] = {}
    for key, value in items:
        if key == "params":
            raise ConfigError("unknown setting 'params'")
        kind = _field_kind(strategy, key)
        values[key] = _parse_value(kind, key, value) if isinstance(value, str) else value
    return dataclasses.replace(cfg, **values)


def parse_strategy_spec(spec: str, base: DecodeConfig | None = None) -> DecodeConfig:
    """``"name"`` or ``"name:key=value,key=value"`` -> a DecodeConfig (for ``fewstep bench``)."""
    name, _, rest = spec.strip().partition(":")
    settings = [f"strategy={name.strip()}"] + [s for s in rest.split(",") if s.strip()]
    return override(base or DecodeConfig(), settings)


def split_assignment(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    return key.strip(), value.strip()


def applicable(cfg: DecodeConfig, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are settings of ``cfg``'s strategy (for defaults that a model
    directory declares for whichever strategy is used: ``steps`` concerns only llada)."""
    names = set(setting_names(cfg.strategy)) - {"strategy"}
    return {k: v for k, v in values.items() if k in names}


def resolve_config(model: Any, strategy: str | None, settings: list[str] | tuple[str, ...],
                   default_gen_length: int | None = None) -> DecodeConfig:
    """Defaults, then the task's generation length (``default_gen_length``), then the model
    directory's decode defaults (those that concern the strategy), then ``--set`` overrides."""
    settings = list(settings)
    chosen = next((split_assignment(s)[1] for s in settings if split_assignment(s)[0] == "strategy"), None)
    strategy = chosen or strategy or ("ar" if model.kind == "causal" else "llada")
    cfg = DecodeConfig(strategy=strategy)
    if default_gen_length is not None:
        cfg = with_gen_length(cfg, default_gen_length)
    cfg = override(cfg, applicable(cfg, dict(model.decode_defaults)))
    return override(cfg, settings)


def with_gen_length(cfg: DecodeConfig, gen_length: int) -> DecodeConfig:
    """``cfg`` with a new generation length; block length and llada's steps follow when they
    equalled the old generation length (one block, one token per step)."""
    values: dict[str, Any] = {"gen_length": gen_length}
    if cfg.block_length == cfg.gen_length:
        values["block_length"] = gen_length
    if cfg.strategy == "llada" and cfg.steps == cfg.gen_length:
        values["steps"] = gen_length
    return dataclasses.replace(cfg, **values)


def same_settings(old: dict[str, Any], cfg: DecodeConfig) -> bool:
    """Whether a recorded config (``summary.json``'s ``config``) describes the decode ``cfg`` does.

    Only the loop's settings and the active strategy's parameters are compared; a setting missing
    from the record (added after it was written) counts as its default. So adding a setting never
    invalidates existing result directories, and other strategies' parameters never matter."""
    if not isinstance(old, dict) or old.get("strategy") != cfg.strategy:
        return False
    defaults = {f.name: f.default for f in loop_fields()}
    defaults.update({f.name: f.default for f in fields(type(cfg.params))})
    return all(old.get(k, defaults[k]) == v for k, v in cfg.to_dict().items())


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)


def check_settings(texts: Sequence[str]) -> None:
    """Refuse ``key=value`` settings (``--set``, bench specs) whose value is a number that is NaN,
    infinite or beyond 64-bit integers: no decode setting is meaningful there."""
    for text in texts:
        for part in re.split(r"[;:,]", text):
            key, sep, value = part.partition("=")
            value = value.strip()
            if not sep or not _NUMBER.fullmatch(value):
                continue
            if re.fullmatch(r"[+-]?\d+", value):
                if not -(2**63) <= int(value) < 2**63:
                    raise ConfigError(f"{key.strip()}={value}: does not fit in 64 bits")
            elif not math.isfinite(float(value)):
                raise ConfigError(f"{key.strip()}={value}: must be a finite number")
