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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from fewstep.errors import ConfigError
from fewstep.settings import check_value, param, validate
from fewstep.strategies import REGISTRY, default_strategy, make_policy, model_kind, strategy_module

REMASKING = ("low_confidence", "random", "margin", "entropy")
EOS_CONFIDENCE = ("keep", "last")
INIT = ("mask", "inject", "interpolate")
CACHE = ("none", "prefix", "dual")
DRAFTER_DTYPES = ("auto", "float32", "bfloat16", "float16")
REJECT = ("mask", "edit")


@dataclass(frozen=True, init=False)
class DecodeConfig:
    """How to decode: the loop's settings, each declared once below with its default, range and
    meaning (``fewstep list settings`` prints them; docs/settings.md is generated from them), plus
    ``params``, the active strategy's parameters (``fewstep list strategies``).

    Rationale for three of them. ``verify_groups`` > 1: a masked diffusion model is trained to predict
    masked positions only, so its output at a visible token is not a calibrated probability of
    that token; its prediction at a masked one is. ``verify_prefix``: a drafter writes left to
    right, so its tokens after an error were conditioned on it; revoking the whole suffix repairs
    chained errors instead of locking them in (:mod:`fewstep.decoding.revise`). ``reject=edit``:
    a rejected draft token takes the model's candidate at once, so with ``remask_threshold =
    confirm_threshold`` one forward judges and repairs a whole draft (docs/warm-starts.md).
    """

    strategy: str = param("llada", "the commit policy (fewstep list strategies); ar: greedy decoding of a causal model")
    gen_length: int = param(24, "tokens in the generation region (ar: the most new tokens)", lo=1)
    block_length: int = param(24, "semi-autoregressive block size; gen_length must be a multiple of it", lo=1)
    temperature: float = param(0.0, "0: greedy; > 0 adds Gumbel noise (float64) to the logits", lo=0)
    remasking: str = param("low_confidence", "the confidence score: probability of the candidate, random, top1 - top2 "
                                             "margin, or negative entropy", choices=REMASKING)
    cfg_scale: float = param(0.0, "classifier-free guidance scale (0: off; > 0: each step costs 2 forwards)", lo=0)
    seed: int = param(0, "seeds every random choice of the decode (noise, random remasking, injection dropout)",
                      lo=0, hi=2**63 - 1)
    early_stop: bool = param(False, "once the decided generation ends in EOS, fill the later blocks with EOS "
                                    "without forwards")
    eos_logit_penalty: float = param(0.0, "subtracted from the EOS logit before choosing candidates", lo=0)
    eos_confidence: str = param("keep", "last: EOS candidates are committed after every other candidate",
                                choices=EOS_CONFIDENCE)
    drafter: str = param("", "warm start: a causal LM (bundled name or directory) that answers first; empty: none")
    init: str = param("mask", "how the draft starts the canvas: mask (no warm start), inject (provisional tokens), "
                              "interpolate (input embeddings mixed toward the draft)", choices=INIT)
    rho: float = param(1.0, "each draft position is kept with probability rho (seeded per prompt)", lo=0, hi=1)
    alpha: float = param(0.5, "interpolate: weight of the draft token's embedding", lo=0, hi=1)
    alpha_decay: float = param(0.0, "interpolate: alpha is multiplied by (1 - alpha_decay) at each step of the block",
                               lo=0, hi=1)
    draft_min_confidence: float = param(0.0, "keep only draft tokens whose drafter probability reaches this (0: all)",
                                        lo=0, hi=1)
    drafter_dtype: str = param("auto", "the drafter's weights: auto (as its directory stores them, float32 for the "
                                       "bundled tiny-ar), float32, bfloat16 or float16", choices=DRAFTER_DTYPES)
    drafter_max_tokens: int = param(0, "the drafter's token budget (0: its directory's gen_length, else gen_length)",
                                    lo=0)
    remask_threshold: float = param(0.0, "prior skepticism: a draft token goes back to mask when the model's "
                                         "probability for it is below this (0: never)", lo=0, hi=1)
    confirm_threshold: float = param(1.0, "a draft token is committed once that probability reaches this (1: when "
                                          "nothing else is left in its block)", lo=0, hi=1)
    revise_threshold: float = param(0.0, "bounded revision: a committed token goes back to mask below this "
                                         "probability (0: off)", lo=0, hi=1)
    max_revisions: int = param(1, "bounded revision: revocations per position at most", lo=0)
    verify_groups: int = param(1, "k > 1: at step s the draft positions i with i % k == s % k are fed masked and "
                                  "judged there; at most the strategy's steps per block", lo=1)
    verify_prefix: bool = param(False, "judge a block's draft as a whole: confirm the longest prefix that reaches "
                                       "remask_threshold, revoke the rest")
    reject: str = param("mask", "a draft token the model rejects: mask (decoded again from the next forward) or edit "
                                "(takes this step's candidate at once, committed)", choices=REJECT)
    edit_min_confidence: float = param(0.0, "reject=edit: a rejected token takes the candidate only where the model's "
                                            "probability for the candidate reaches this, else it goes back to mask",
                                       lo=0, hi=1)
    cache: str = param("none", "key/value cache: none, prefix (prompt and finished blocks cached), dual (the "
                               "positions after the block too)", choices=CACHE)
    cache_refresh: int = param(0, "rerun the whole sequence every this many steps of a block (0: at its first step "
                                  "only; 1: every step, exactly the uncached decode)", lo=0)
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
        if hasattr(module, "check"):
            module.check(params, self)
        _check_budget(self)

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
    if not isinstance(name, str):
        raise ConfigError(f"strategy must be a name, got {name!r}")
    return strategy_module(name)


def setting_names(strategy: str) -> list[str]:
    """The ``--set`` keys of a strategy: the loop's settings, then its parameters."""
    return [f.name for f in loop_fields()] + [f.name for f in fields(_strategy(strategy).Params)]


def _not_a_param(strategy: str, key: str) -> str:
    owners = [s for s in REGISTRY if key in {f.name for f in fields(_strategy(s).Params)}]
    where = f" (a parameter of {', '.join(owners)})" if owners else ""
    return (f"strategy {strategy!r} has no setting {key!r}{where}; its settings: "
            f"{', '.join(setting_names(strategy))}")


def _check_loop(cfg: DecodeConfig) -> None:
    """The declared types and ranges, then the rules that relate two settings."""
    validate(None, cfg)
    if model_kind(cfg.strategy) == "diffusion" and cfg.gen_length % cfg.block_length:
        raise ConfigError(f"gen_length ({cfg.gen_length}) must be a multiple of block_length ({cfg.block_length})")
    if cfg.init != "mask" and not cfg.drafter:
        raise ConfigError(f"init={cfg.init} needs a drafter (--drafter NAME_OR_PATH or --set drafter=...)")
    if cfg.remask_threshold > cfg.confirm_threshold:
        raise ConfigError(f"remask_threshold ({cfg.remask_threshold}) must not exceed confirm_threshold "
                          f"({cfg.confirm_threshold})")
    _check_overflow(cfg)


FLOAT32_MAX = 3.4028234663852886e38
LOGIT_GAP = 1e4  # a generous bound on the gap between two logits of one position (conditional - unconditional)
GUMBEL_LOG = 40.0  # |log(-log u)| for a float64 uniform u in (0, 1) stays below 37


def _check_overflow(cfg: DecodeConfig) -> None:
    """Settings in their declared range whose arithmetic would overflow: guidance multiplies float32
    logit gaps by ``cfg_scale + 1`` (past float32's range every logit turns infinite or NaN and the
    decode returns nothing meaningful), and sampling adds ``temperature * log(-log u)`` in float64."""
    top = FLOAT32_MAX / LOGIT_GAP - 1
    if cfg.cfg_scale > top:
        raise ConfigError(f"cfg_scale={cfg.cfg_scale:g} would overflow the guided logits (float32); "
                          f"use at most {top:.3g}")
    hot = sys.float_info.max / (2 * GUMBEL_LOG)
    if cfg.temperature > hot:
        raise ConfigError(f"temperature={cfg.temperature:g} would overflow the Gumbel noise (float64); "
                          f"use at most {hot:.3g}")


def _check_budget(cfg: DecodeConfig) -> None:
    """Every draft token must be judged before its block completes: with ``verify_groups`` = k a
    block needs at least k steps."""
    if cfg.verify_groups == 1 or model_kind(cfg.strategy) != "diffusion":
        return
    budget = make_policy(cfg).max_steps()
    if cfg.verify_groups > budget:
        steps = f"{budget} step{'s' if budget > 1 else ''}"
        raise ConfigError(f"verify_groups ({cfg.verify_groups}) exceeds {cfg.strategy}'s {steps} per block: "
                          f"some draft tokens would be returned unjudged")


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
                   default_gen_length: int | None = None, gen_length: int | None = None,
                   request: list[str] | tuple[str, ...] | dict[str, Any] = ()) -> DecodeConfig:
    """Defaults, then the task's generation length (``default_gen_length``), then the model
    directory's decode defaults (those that concern the strategy), then the warm-start settings a
    drafter brings (:func:`drafter_settings`), then ``settings`` (``--set``), then a server
    request's generation length (``gen_length``: block length and llada's steps follow, as
    :func:`with_gen_length` says) and its own ``request`` settings (``key=value`` strings or a
    dict). A drafter or a warm-start setting counts the same in ``settings`` and ``request``."""
    settings = list(settings)
    pairs = [split_assignment(s) for s in settings]
    chosen = next((v for k, v in pairs if k == "strategy"), None)
    if not (chosen or strategy):
        strategy = default_strategy(model.kind)
    strategy = chosen or strategy
    cfg = DecodeConfig(strategy=strategy)
    if default_gen_length is not None:
        cfg = with_gen_length(cfg, default_gen_length)
    cfg = override(cfg, applicable(cfg, dict(model.decode_defaults)))
    later = list(request.items()) if isinstance(request, dict) else [split_assignment(s) for s in request]
    cfg = override(cfg, drafter_settings(_recommended(model), pairs + later))
    cfg = override(cfg, settings)
    if gen_length is not None:
        cfg = with_gen_length(cfg, gen_length)
    return override(cfg, request) if request else cfg


WARM_START = ("init", "drafter_dtype", "rho", "alpha", "alpha_decay", "draft_min_confidence", "remask_threshold",
              "confirm_threshold", "revise_threshold", "max_revisions", "verify_groups", "verify_prefix", "reject",
              "edit_min_confidence")


def drafter_settings(recommended: dict[str, Any] | None, given: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The warm-start settings a drafter brings, under the explicit ``given`` (key, value) pairs
    (every ``--set``, ``--drafter`` and request setting; the last of a key wins): none without a
    drafter; ``init=inject`` unless an init is given; and, where no warm-start setting
    (:data:`WARM_START`) is given at all, the model directory's ``recommended`` ones over it.

    The recommendation is all or nothing: one explicit warm-start setting and none of it applies,
    since its values are chosen together (a remask_threshold tuned with confirm_threshold = it
    and reject=edit means something else beside another confirm_threshold)."""
    values = dict(given)
    if not values.get("drafter"):
        return {}
    brought: dict[str, Any] = {"drafter": values["drafter"]}
    explicit = set(values) & set(WARM_START)
    if "init" not in explicit:
        brought["init"] = "inject"
    if not explicit and recommended:
        brought.update(check_warm_start(recommended))
    return brought


def _recommended(model: Any) -> dict[str, Any] | None:
    """The model directory's recommended warm-start settings, checked (a bad one is named with its file)."""
    values = model.decode_defaults.get("warm_start")
    if values is None:
        return None
    try:
        return check_warm_start(values)
    except ConfigError as e:
        raise ConfigError(f"{model.name}: generation_config.json: {e}") from None


def check_warm_start(values: Any) -> dict[str, Any]:
    """A model directory's recommended warm-start settings (``warm_start`` in its
    generation_config.json), checked: an object of warm-start settings, each of its declared type
    and range, remask_threshold not above confirm_threshold. -> a copy."""
    if not isinstance(values, dict):
        raise ConfigError(f"warm_start must be an object of warm-start settings, got {values!r}")
    declared = {f.name: f for f in loop_fields()}
    for key, value in values.items():
        if key not in WARM_START:
            raise ConfigError(f"warm_start: {key!r} is not a warm-start setting (those are: {', '.join(WARM_START)})")
        check_value("warm_start", declared[key], value)
    remask, confirm = (values.get(k, declared[k].default) for k in ("remask_threshold", "confirm_threshold"))
    if remask > confirm:
        raise ConfigError(f"warm_start: remask_threshold ({remask}) must not exceed confirm_threshold ({confirm})")
    return dict(values)


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
