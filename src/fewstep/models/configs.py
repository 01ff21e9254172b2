"""What the native models' config readers share: the one-line refusal of a config.json value that
fewstep does not implement, the fields a dataclass config keeps, and the reading and checks of the
Qwen2 / Qwen3 fields (Dream, SDAR, Fast-dLLM v2).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fewstep.errors import ModelLoadError
from fewstep.models.layers import ACTIVATIONS

QWEN_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def refuse(field: str, value: Any, why: str) -> ModelLoadError:
    """The error for ``field=value`` in a config.json, in one line."""
    return ModelLoadError(f"config field {field}={value!r} is not implemented ({why})")


def known_fields(cls: Any, d: dict[str, Any], keep_none: bool = False) -> dict[str, Any]:
    """The entries of ``d`` that are fields of the dataclass ``cls`` (null values left out unless
    ``keep_none``)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names and (keep_none or v is not None)}


def config_dict(cfg: Any, **published: Any) -> dict[str, Any]:
    """A dataclass config as a config.json: its fields, then ``published`` (model_type, ...)."""
    return {**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **published}


def read_qwen(d: dict[str, Any], required: tuple[str, ...] = QWEN_REQUIRED) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Qwen2 / Qwen3 config.json with transformers' defaults filled in (``num_key_value_heads``,
    ``rope_theta`` from ``rope_parameters``), and its ``rope_parameters``; refuses one without the
    ``required`` fields."""
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ModelLoadError(f"config.json lacks {', '.join(missing)}")
    d = dict(d)
    d.setdefault("num_key_value_heads", d["num_attention_heads"])
    params = d.get("rope_parameters") or {}
    if "rope_theta" not in d and "rope_theta" in params:
        d["rope_theta"] = params["rope_theta"]
    return d, params


def check_qwen_rotary(d: dict[str, Any], params: dict[str, Any], attention: str) -> None:
    """Refuse rotary scaling, a sliding window (``attention``: what the family implements instead)
    and an activation fewstep does not have."""
    if d.get("rope_scaling") is not None:
        raise refuse("rope_scaling", d["rope_scaling"], "plain rotary embeddings only")
    if params.get("rope_type", "default") != "default":
        raise refuse("rope_parameters.rope_type", params["rope_type"], "only the default rotary embedding")
    if d.get("use_sliding_window"):
        raise refuse("use_sliding_window", d["use_sliding_window"], f"{attention} only")
    if d.get("hidden_act", "silu") not in ACTIVATIONS:
        raise refuse("hidden_act", d["hidden_act"], "choose one of " + ", ".join(ACTIVATIONS))


def check_qwen2_layout(d: dict[str, Any], family: str) -> None:
    """Qwen2's layers: head dim hidden_size / num_attention_heads, biases on q, k and v only."""
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != d["hidden_size"] // d["num_attention_heads"]:
        raise refuse("head_dim", head_dim, f"{family}'s head dim is hidden_size / num_attention_heads")
    for name in ("attention_bias", "mlp_bias"):  # Qwen2 keys: q/k/v have a bias, nothing else
        if name in d and d[name] not in (None, name == "attention_bias"):
            raise refuse(name, d[name], f"{family}'s layout has q/k/v biases only")
