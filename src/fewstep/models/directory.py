"""The JSON files of a model directory fewstep reads and writes besides the weights: config.json
and the decode defaults in generation_config.json (an older directory's fewstep.json still read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewstep.errors import ConfigError, ModelLoadError


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} is not a JSON object: not a model configuration")
    return obj


DECODE_KEYS = ("gen_length", "block_length", "steps")  # fewstep's keys in generation_config.json


def decode_defaults(path: Path) -> dict[str, Any]:
    """Decode defaults of a model directory: generation_config.json (``max_new_tokens`` is the
    generation length; ``gen_length``, ``block_length`` and ``steps`` are fewstep's keys;
    ``warm_start``, an object of recommended warm-start settings: anything else is a
    ModelLoadError; its settings are checked where a configuration is resolved,
    :func:`fewstep.config.resolve_config`), over an older directory's fewstep.json."""
    old = path / "fewstep.json"
    out: dict[str, Any] = dict(_read_json(old).get("decode_defaults", {})) if old.is_file() else {}
    gen = path / "generation_config.json"
    if gen.is_file():
        g = _read_json(gen)
        if isinstance(g.get("max_new_tokens"), int):
            out["gen_length"] = g["max_new_tokens"]
        out.update({k: g[k] for k in DECODE_KEYS if isinstance(g.get(k), int)})
        if "warm_start" in g:
            out["warm_start"] = _warm_start(g["warm_start"], gen)
    return out


def _warm_start(values: Any, where: Path) -> dict[str, Any]:
    """A directory's recommended warm-start settings: an object (its settings are checked by
    :func:`fewstep.config.check_warm_start` when a configuration is resolved)."""
    if not isinstance(values, dict):
        raise ModelLoadError(f"{where}: warm_start must be an object of warm-start settings, got {values!r}")
    return dict(values)


def write_decode_defaults(path: Path, defaults: dict[str, Any]) -> None:
    """Write ``defaults`` into ``path``/generation_config.json (kept keys merged; atomic), where
    transformers' ``generate()`` reads ``max_new_tokens`` too; drops an old fewstep.json.
    ``defaults["warm_start"]``: the recommended warm-start settings (a dict of DecodeConfig
    settings, which the caller checks with :func:`fewstep.config.check_warm_start`), applied when
    a drafter is given and no warm-start setting is (:func:`fewstep.config.drafter_settings`)."""
    gen = path / "generation_config.json"
    g = _read_json(gen) if gen.is_file() else {}
    g.update({k: v for k, v in defaults.items() if k in DECODE_KEYS and k != "gen_length"})
    if "warm_start" in defaults:
        if not isinstance(defaults["warm_start"], dict):
            raise ConfigError(f"warm_start must be an object of warm-start settings, got {defaults['warm_start']!r}")
        g["warm_start"] = dict(defaults["warm_start"])
    if "gen_length" in defaults:  # transformers' name for it, so that its generate() agrees
        g["max_new_tokens"] = defaults["gen_length"]
    tmp = gen.with_name(gen.name + ".tmp")
    tmp.write_text(json.dumps(g, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(gen)
    (path / "fewstep.json").unlink(missing_ok=True)
