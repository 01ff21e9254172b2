"""What ``fewstep list`` prints: the tasks, the models and architectures, and the decoding strategies.

Each listing is built from the declarations the rest of the package runs on (the task registry, the
bundled model directories, the architecture registry, the strategy registry), so it cannot drift from
them. Rows are plain dicts; :func:`table` lays them out.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewstep.models import registry


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Rows as left-aligned columns under ``header``, two spaces apart."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells) + "\n"


# --- tasks --------------------------------------------------------------------------------------------


def task_rows() -> list[dict[str, Any]]:
    """One row per registered task: name, default generation length, and the first line of its module's
    description."""
    from fewstep.tasks.base import REGISTRY

    rows = []
    for name, target in sorted(REGISTRY.items()):
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
        summary = (module.__doc__ or "").strip().splitlines()[0].replace("``", "") if module.__doc__ else ""
        rows.append({"name": name, "gen_length": cls.default_gen_length, "summary": summary})
    return rows


def format_tasks(rows: list[dict[str, Any]]) -> str:
    return table([(r["name"], r["gen_length"], r["summary"]) for r in rows], ("task", "gen_length", "what it is"))


# --- models -------------------------------------------------------------------------------------------


def safetensors_parameters(path: Path) -> int:
    """Number of values stored in a safetensors file, read from its header (no tensor is loaded)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def describe_model_dir(path: Path) -> dict[str, Any]:
    """Kind, architecture, parameter count, context length and chat template of a model directory."""
    config = json.loads((path / "config.json").read_text())
    model_type = str(config.get("model_type", "?"))
    weights = sorted(path.glob("*.safetensors"))
    tok_cfg = path / "tokenizer_config.json"
    has_template = (path / "chat_template.jinja").is_file() or (
        tok_cfg.is_file() and bool(json.loads(tok_cfg.read_text()).get("chat_template")))
    return {
        "kind": "diffusion" if registry.find(model_type) is not None else "causal",
        "model_type": model_type,
        "parameters": sum(safetensors_parameters(w) for w in weights),
        "context": config.get("max_sequence_length", config.get("max_position_embeddings", "?")),
        "chat_template": has_template,
    }


def model_rows() -> list[dict[str, Any]]:
    """The bundled models (installed or not), the built-in ``gold`` model, and the architectures
    fewstep implements (:mod:`fewstep.models.registry`: a directory of one loads with fewstep's code)."""
    from fewstep.models.loading import ASSETS, BUNDLED

    rows: list[dict[str, Any]] = []
    for name in BUNDLED:
        path = ASSETS / name
        if (path / "config.json").is_file():
            rows.append({"name": name, "installed": True, "path": str(path), **describe_model_dir(path)})
        else:
            rows.append({"name": name, "installed": False, "path": str(path)})
    rows.append({"name": "gold", "installed": True, "kind": "reference", "path": "(built in)",
                 "summary": "answers every problem with its reference solution (checks a task's pipeline)"})
    return rows + architecture_rows()


def architecture_rows() -> list[dict[str, Any]]:
    """One row per architecture in the registry, named by its config.json ``model_type``."""
    return [{"name": a.model_type, "installed": True, "kind": "architecture", "path": "(any directory)",
             "model_type": a.model_type, "architecture": a.name, "attention": a.attention,
             "summary": f"fewstep's {a.name}; attention: {a.attention}"} for a in registry.ARCHITECTURES]


def format_models(rows: list[dict[str, Any]]) -> str:
    def line(r: dict[str, Any]) -> tuple[Any, ...]:
        if not r["installed"]:
            return (r["name"], "-", "-", "-", "-", "not installed")
        if r["kind"] in ("reference", "architecture"):
            return (r["name"], r["kind"], "-", "-", "-", r["summary"])
        params = f"{r['parameters'] / 1e6:.2f}M"
        return (r["name"], f"{r['kind']} ({r['model_type']})", params, r["context"],
                "yes" if r["chat_template"] else "no", r["path"])

    return table([line(r) for r in rows], ("model", "kind", "parameters", "context", "chat template", "where"))


# --- strategies ---------------------------------------------------------------------------------------


def strategy_rows() -> list[dict[str, Any]]:
    """The strategy registry's own description: ``fewstep.strategies.describe()``, a list of
    ``{"name", "summary", "params": [{"name", "type", "default", "range", "help"}]}`` built from the
    declarations the engine validates against."""
    from fewstep.strategies import describe

    return list(describe())


def setting_rows() -> list[dict[str, Any]]:
    """The decode loop's settings (``--set`` keys of every strategy), from their declarations in
    :class:`fewstep.config.DecodeConfig`: ``[{"name", "type", "default", "range", "help"}]``."""
    from fewstep.config import DecodeConfig
    from fewstep.settings import describe

    return describe(DecodeConfig)


def format_settings(rows: list[dict[str, Any]]) -> str:
    return table([(p["name"], p["type"], _plain(p["default"]), _plain(p["range"]), p["help"]) for p in rows],
                 ("setting", "type", "default", "range", "meaning"))


def settings_reference() -> str:
    """docs/settings.md: the loop's settings and every strategy's parameters, as Markdown tables
    generated from their declarations (``fewstep list settings --markdown``)."""
    from fewstep.settings import markdown_table

    parts = ["# Settings reference", "",
             "Generated by `fewstep list settings --markdown` from the declarations the engine validates "
             "against; do not edit by hand. Every setting is a `--set key=value` of `generate`, `eval` and "
             "`bench`, a field of `fewstep.DecodeConfig`, and a `settings` entry of a server request.", "",
             "## The decode loop (every strategy)", "", markdown_table(setting_rows()), ""]
    for s in strategy_rows():
        parts += [f"## `{s['name']}`", "", s["summary"], ""]
        parts += [markdown_table(s["params"]), ""] if s["params"] else ["No parameters.", ""]
    return "\n".join(parts)


def format_strategies(rows: list[dict[str, Any]]) -> str:
    """Each strategy's name and summary, then a table of its parameters (type, default, range, meaning)."""
    parts = []
    for s in rows:
        params = s.get("params", [])
        grid = table([(p["name"], p["type"], _plain(p.get("default")), _plain(p.get("range")), p.get("help", ""))
                      for p in params], ("parameter", "type", "default", "range", "meaning")) if params else ""
        body = "".join(f"  {ln}\n" for ln in grid.splitlines())
        parts.append(f"{s['name']}: {s.get('summary', '')}\n{body}")
    return "\n".join(parts)


def _plain(value: Any) -> str:
    """A default or range as the user would type it."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
