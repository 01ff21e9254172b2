"""Decoding configuration: one frozen dataclass, one field per ``--set`` key.

Override with ``dataclasses.replace`` (or :func:`override` for ``key=value`` strings from the CLI);
every value is checked in ``__post_init__`` so a bad value fails where it is made, with a message
that names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from fewstep.errors import ConfigError

STRATEGIES = ("llada", "threshold", "factor", "cad", "ar")
REMASKING = ("low_confidence", "random", "margin", "entropy")
EOS_CONFIDENCE = ("keep", "last")


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode.

    strategy: commit policy. ``llada``: fixed linear schedule (``steps``); ``threshold``: every
        masked position of the block with confidence >= ``threshold`` (at least one);
        ``factor``: Fast-dLLM's factor rule; ``cad``: CD4LM confidence-adaptive decoding;
        ``ar``: greedy autoregressive decoding of a causal model (the drafter ``tiny-ar``).
    gen_length: tokens in the generation region (for ``ar``: the most new tokens).
    block_length: semi-autoregressive block size; ``gen_length`` must be a multiple of it.
    steps: ``llada`` only: denoising steps over the whole generation, split evenly over blocks.
    temperature: 0 is greedy; > 0 adds Gumbel noise (in float64) to the logits.
    remasking: the confidence score: ``low_confidence`` (probability of the candidate),
        ``margin`` (top1 - top2), ``entropy`` (negative entropy) or ``random``.
    cfg_scale: classifier-free guidance scale s (0 disables it; each step then costs 2 forwards).
    seed: seeds every random choice of the decode (noise, random remasking).
    threshold: ``threshold`` strategy's confidence threshold, in (0, 1].
    factor: ``factor`` strategy's f: accept the longest confidence-sorted prefix whose n-th
        (1-based) confidence is >= 1 - f / (n + 1); > 0.
    tau, min_tokens, max_tokens, max_steps_per_block, eos_min_progress: ``cad``: commit
        k = max(#{confidence >= tau among the top max_tokens}, min_tokens) positions per step
        (max_tokens 0: the block length); after max_steps_per_block steps (0: the block length)
        the rest of the block is committed; while the decoded fraction of the generation is below
        eos_min_progress, positions whose candidate is EOS are not eligible.
    early_stop: once a completed block leaves the generation ending in EOS from its first EOS
        on, fill every later block with EOS without further forwards (see decoding.loop).
    eos_logit_penalty: subtracted from the EOS logit before choosing candidates (0: off).
    eos_confidence: ``keep``, or ``last``: EOS candidates get confidence 0, so they are
        committed after every other candidate (LLaDA's appendix B.4 advice for long answers).
    """

    strategy: str = "llada"
    gen_length: int = 24
    block_length: int = 24
    steps: int = 24
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    seed: int = 0
    threshold: float = 0.9
    factor: float = 1.0
    tau: float = 0.95
    min_tokens: int = 1
    max_tokens: int = 0
    max_steps_per_block: int = 0
    eos_min_progress: float = 0.0
    early_stop: bool = False
    eos_logit_penalty: float = 0.0
    eos_confidence: str = "keep"

    def __post_init__(self) -> None:
        _check_types(self)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if self.gen_length < 1:
            raise ConfigError(f"gen_length must be >= 1, got {self.gen_length}")
        if self.strategy == "ar":
            return
        if self.block_length < 1:
            raise ConfigError(f"block_length must be >= 1, got {self.block_length}")
        if self.gen_length % self.block_length:
            raise ConfigError(
                f"gen_length ({self.gen_length}) must be a multiple of block_length ({self.block_length})"
            )
        blocks = self.gen_length // self.block_length
        if self.strategy == "llada" and (self.steps < blocks or self.steps % blocks):
            raise ConfigError(
                f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                f"(gen_length / block_length = {blocks})"
            )
        _in_range("temperature", self.temperature, 0, None)
        _in_range("cfg_scale", self.cfg_scale, 0, None)
        _in_range("threshold", self.threshold, 0, 1, open_low=True)
        _in_range("factor", self.factor, 0, None, open_low=True)
        _in_range("tau", self.tau, 0, 1, open_low=True)
        _in_range("min_tokens", self.min_tokens, 1, None)
        _in_range("max_tokens", self.max_tokens, 0, None)
        _in_range("max_steps_per_block", self.max_steps_per_block, 0, None)
        _in_range("eos_min_progress", self.eos_min_progress, 0, 1)
        _in_range("eos_logit_penalty", self.eos_logit_penalty, 0, None)
        if self.remasking not in REMASKING:
            raise ConfigError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.eos_confidence not in EOS_CONFIDENCE:
            raise ConfigError(f"eos_confidence must be one of {', '.join(EOS_CONFIDENCE)}, got {self.eos_confidence!r}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _in_range(name: str, value: float, lo: float, hi: float | None, open_low: bool = False) -> None:
    bad = value <= lo if open_low else value < lo
    if bad or (hi is not None and value > hi):
        low = f"({lo}" if open_low else f"[{lo}"
        high = f"{hi}]" if hi is not None else "inf)"
        raise ConfigError(f"{name} must be in {low}, {high}, got {value}")


_TYPES: dict[str, Any] = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _check_types(cfg: DecodeConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = str(f.type)
        if (isinstance(value, bool) and kind != "bool") or not isinstance(value, _TYPES[kind]):
            raise ConfigError(f"{f.name} must be of type {kind}, got {value!r}")


def _parse_value(name: str, text: str) -> Any:
    kind = str(next(f.type for f in fields(DecodeConfig) if f.name == name))
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


def override(cfg: DecodeConfig, assignments: list[str] | dict[str, Any]) -> DecodeConfig:
    """Apply ``["key=value", ...]`` (strings, parsed by field type) or a dict of values."""
    known = {f.name for f in fields(DecodeConfig)}
    values: dict[str, Any] = {}
    items = assignments.items() if isinstance(assignments, dict) else [_split(a) for a in assignments]
    for key, value in items:
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
        values[key] = _parse_value(key, value) if isinstance(value, str) else value
    return dataclasses.replace(cfg, **values)


def parse_strategy_spec(spec: str, base: DecodeConfig | None = None) -> DecodeConfig:
    """``"name"`` or ``"name:key=value,key=value"`` -> a DecodeConfig (for ``fewstep bench``)."""
    name, _, rest = spec.strip().partition(":")
    settings = [f"strategy={name.strip()}"] + [s for s in rest.split(",") if s.strip()]
    return override(base or DecodeConfig(), settings)


def _split(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    return key.strip(), value.strip()


def resolve_config(model: Any, strategy: str | None, settings: list[str] | tuple[str, ...],
                   default_gen_length: int | None = None) -> DecodeConfig:
    """Defaults, then the task's generation length (``default_gen_length``), then the model
    directory's decode defaults, then ``--set`` overrides."""
    strategy = strategy or ("ar" if model.kind == "causal" else "llada")
    cfg = DecodeConfig(strategy=strategy)
    if default_gen_length is not None:
        cfg = _with_gen_length(cfg, default_gen_length)
    cfg = override(cfg, dict(model.decode_defaults))
    return override(cfg, list(settings))


def _with_gen_length(cfg: DecodeConfig, gen_length: int) -> DecodeConfig:
    """``cfg`` with a new generation length; block length and steps follow when they equalled the
    old generation length (one block, one token per step)."""
    values: dict[str, Any] = {"gen_length": gen_length}
    if cfg.block_length == cfg.gen_length:
        values["block_length"] = gen_length
    if cfg.steps == cfg.gen_length:
        values["steps"] = gen_length
    return dataclasses.replace(cfg, **values)
