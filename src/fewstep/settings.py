"""Settings as data: a setting is a dataclass field declared once with :func:`param` (default, help
text, allowed range or choices); :func:`validate` checks a dataclass against its declarations and
:func:`describe` lists them (``fewstep list strategies``, ``fewstep list settings`` and the
settings reference in the docs all read it). The decode loop's settings
(:class:`fewstep.config.DecodeConfig`) and every strategy's parameters are declared this way.

A validation error names the setting, and the strategy where the setting is a strategy's
parameter: ``cad: tau must be in (0, 1], got 2.0``. Importing this module loads no torch.
"""

from __future__ import annotations

import math
from dataclasses import field, fields
from typing import Any

from fewstep.errors import ConfigError


def param(default: Any, help: str, lo: float | None = None, hi: float | None = None, open_low: bool = False,
          choices: tuple[str, ...] = ()) -> Any:
    """A setting: its default, help text and allowed range (``lo``, ``hi``; ``open_low`` excludes
    ``lo``) or ``choices``; validation and the listings both read this declaration."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "open_low": open_low,
                                            "choices": choices})


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def check_range(owner: str | None, name: str, value: float, lo: float | None, hi: float | None,
                open_low: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number in the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{_prefix(owner)}{name} must be of type float, got {value!r}")
    bad = not math.isfinite(value) or (lo is not None and (value <= lo if open_low else value < lo))
    if bad or (hi is not None and value > hi):
        raise ConfigError(f"{_prefix(owner)}{name} must be in {_interval(lo, hi, open_low)}, got {value}")


def check_int(owner: str | None, name: str, value: int, lo: int | None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_prefix(owner)}{name} must be of type int, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{_prefix(owner)}{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{_prefix(owner)}{name} must be <= {hi}, got {value}")


def _interval(lo: float | None, hi: float | None, open_low: bool) -> str:
    low = "(-inf" if lo is None else (f"({lo}" if open_low else f"[{lo}")
    return f"{low}, {'inf)' if hi is None else f'{hi}]'}"


def check_value(owner: str | None, f: Any, value: Any) -> None:
    """Check one value against the declaration of the field ``f``."""
    m, kind = f.metadata, str(f.type)
    if kind == "int":
        check_int(owner, f.name, value, m.get("lo"), m.get("hi"))
    elif kind == "float":
        check_range(owner, f.name, value, m.get("lo"), m.get("hi"), m.get("open_low", False))
    elif kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{_prefix(owner)}{f.name} must be true or false, got {value!r}")
    elif kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{_prefix(owner)}{f.name} must be of type str, got {value!r}")
    elif kind == "str" and m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{_prefix(owner)}{f.name} must be one of {', '.join(m['choices'])}, got {value!r}")


def declared(obj_or_cls: Any) -> list[Any]:
    """The fields of a dataclass that are declared with :func:`param`."""
    return [f for f in fields(obj_or_cls) if "help" in f.metadata]


def validate(owner: str | None, values: Any) -> None:
    """Check every declared field of a dataclass instance (type, range, choices)."""
    for f in declared(values):
        check_value(owner, f, getattr(values, f.name))


def describe(cls: Any) -> list[dict[str, Any]]:
    """[{name, type, default, range, help}] of a dataclass's declared fields."""
    out = []
    for f in declared(cls):
        m = f.metadata
        rng = " | ".join(m["choices"]) if m.get("choices") else _interval(m.get("lo"), m.get("hi"),
                                                                           m.get("open_low", False))
        if str(f.type) == "str" and not m.get("choices"):
            rng = "text"
        elif str(f.type) == "bool":
            rng = "true | false"
        out.append({"name": f.name, "type": str(f.type), "default": f.default, "range": rng, "help": m["help"]})
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`describe` rows."""
    lines = ["| setting | type | default | range | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        default = str(r["default"]).lower() if isinstance(r["default"], bool) else str(r["default"])
        default = f"`{default}`" if default else "(empty)"
        cells = [f"`{r['name']}`", r["type"], default, str(r["range"]), r["help"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
