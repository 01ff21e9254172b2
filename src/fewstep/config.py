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

STRATEGIES = ("llada", "ar")
REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode.

    strategy: ``llada`` (LLaDA reference decoding) for diffusion models; ``ar`` (greedy
        autoregressive) for causal models such as the drafter ``tiny-ar``.
    gen_length: tokens in the generation region (for ``ar``: the most new tokens).
    block_length: semi-autoregressive block size; ``gen_length`` must be a multiple of it.
    steps: denoising steps over the whole generation, split evenly over the blocks.
    temperature: 0 is greedy; > 0 adds Gumbel noise (in float64) to the logits.
    remasking: ``low_confidence`` (commit the most probable candidates) or ``random``.
    cfg_scale: classifier-free guidance scale s (0 disables it; each step then costs 2 forwards).
    seed: seeds every random choice of the decode (noise, random remasking).
    """

    strategy: str = "llada"
    gen_length: int = 24
    block_length: int = 8
    steps: int = 24
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    seed: int = 0

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
        if self.steps < blocks or self.steps % blocks:
            raise ConfigError(
                f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                f"(gen_length / block_length = {blocks})"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.remasking not in REMASKING:
            raise ConfigError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.cfg_scale < 0:
            raise ConfigError(f"cfg_scale must be >= 0, got {self.cfg_scale}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_types(cfg: DecodeConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        want = {"int": int, "float": (int, float), "str": str}[str(f.type)]
        if isinstance(value, bool) or not isinstance(value, want):
            raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")


def _parse_value(name: str, text: str) -> Any:
    kind = str(next(f.type for f in fields(DecodeConfig) if f.name == name))
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{name} expects a {kind}, got {text!r}") from None
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


def _split(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    return key.strip(), value.strip()
