"""``fewstep distill --plan``: the memory one process of a distillation run needs, from the teacher's
config.json alone (no weights, no tokenizer).

The model is built on the meta device from fewstep's own classes for the architecture
(:mod:`fewstep.models.registry`), so the parameter count is exact (tied heads counted once); LoRA's
trainable parameters are ``r * (in + out)`` per adapted linear layer (peft's A and B matrices).

Per process, in bytes (P parameters, P_t trainable, N processes, ``/N`` only under ``--sharding fsdp``):

- ``weights``: the student. Full fine-tuning keeps float32 trainable weights (with ``--dtype bfloat16``
  the float32 copy is the master copy; forwards run in bfloat16): ``4 P (/N)``, plus the bfloat16
  copy the forward computes with (autocast's cached casts without sharding, FSDP's all-gathered
  units with it: two units in flight, the largest ones). LoRA: the frozen base in ``--dtype`` (``/N``
  under FSDP) plus float32 adapters.
- ``teacher``: the frozen teacher in ``--dtype`` (replicated: ``bytes(dtype) P``); 0 with LoRA, whose
  teacher is the student's base with the adapters disabled (one copy of the base weights).
- ``gradients``: float32, ``4 P_t (/N)``. ``optimizer``: AdamW's two float32 states, ``8 P_t (/N)``.
- ``activations``: one micro-batch of ``b = ceil(batch / (N * grad_accum))`` rows of
  ``T = prompt_length + gen_length`` tokens (the prompt length is an assumption, ``--plan-prompt-length``,
  default :data:`PROMPT_LENGTH`), at ``c`` bytes per value (2 when forwards run in bfloat16, else 4):

  * per layer and token, the tensors autograd keeps for the backward pass, counted from the LLaDA
    block (:class:`fewstep.models.llada.LLaDABlock`): ``11 d + 4 d_kv + 4 f`` values (layer input,
    the two norms' outputs and their normalised inputs, q and k before and after rotary and the
    rotated halves, v, the attention output and its reshaped copy, the residual sum, the MLP's gate,
    activation, up and product), d the hidden size, d_kv the key/value width, f the MLP width (MoE:
    the experts a token visits); the norms and rotary compute in float32, so in bfloat16 the layer
    keeps ``17 d + 6 d_kv + 4 f`` values of 2 bytes;
  * with ``--gradient-checkpointing``: only each layer's input (``d`` per token and layer) plus one
    layer's tensors while it is recomputed;
  * the output head: student and teacher logits (``2 b T V c``) and, over the ``M = b gen rs_max``
    student-masked positions, six float32 ``[M, V]`` tensors (the float logits, their log-softmax
    for the cross-entropy and at temperature T, the teacher's log-softmax, the KL terms, the gradient).

The plan is an estimate of the peak: the allocator's caching and fragmentation come on top (about
10% on CPU for the tiny model of the tests, which must stay within 15% of the measured peak).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.training.config import DistillConfig

PROMPT_LENGTH = 256  # tokens of prompt assumed per row (GSM8K questions in LLaDA's chat template fit in it)
GB = 1e9


@dataclass(frozen=True)
class Shape:
    """What the activation model needs from an architecture."""

    hidden: int
    kv: int  # key/value width (heads x head dim)
    mlp: float  # MLP width a token passes through, averaged over the layers
    layers: int
    vocab: int  # rows of the output head
    unit: int  # parameters of the largest FSDP unit (a layer, or the embeddings / head)


def _meta_module(config: dict[str, Any]):
    import torch

    from fewstep.errors import ConfigError
    from fewstep.models.registry import find, target

    arch = find(config.get("model_type"))
    if arch is None:
        raise ConfigError(f"--plan knows fewstep's own architectures only (model_type {config.get('model_type')!r})")
    cfg = target(arch.config).from_dict(config)
    with torch.device("meta"):
        return cfg, target(arch.module)(cfg)


def _shape(cfg: Any, module) -> Shape:
    """Widths of the LLaDA, Dream and LLaDA 2 configs (field names differ)."""
    import torch

    if hasattr(cfg, "d_model"):  # LLaDA
        d, layers = cfg.d_model, cfg.n_layers
        kv, mlp = cfg.n_kv_heads * (d // cfg.n_heads), float(cfg.mlp_hidden_size)
    else:  # Dream, LLaDA 2
        d, layers = cfg.hidden_size, cfg.num_hidden_layers
        head = getattr(cfg, "head_dim", d // cfg.num_attention_heads)
        kv, mlp = cfg.num_key_value_heads * head, float(cfg.intermediate_size)
        if getattr(cfg, "num_experts", None):
            moe = cfg.moe_intermediate_size * (cfg.num_experts_per_tok + (cfg.num_shared_experts or 0))
            dense = min(cfg.first_k_dense_replace, layers)
            mlp = (dense * cfg.intermediate_size + (layers - dense) * moe) / layers
    units = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    sizes = [sum(p.numel() for p in block.parameters()) for block in (units[0] if units else [])]
    big = [m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Linear))]
    vocab = max(m.weight.shape[0] for m in module.modules() if isinstance(m, torch.nn.Embedding))
    return Shape(d, kv, mlp, layers, vocab, max([*sizes, *big]))


def lora_parameters(module, r: int, targets: str) -> int:
    """peft's LoRA parameters: ``r * (in + out)`` for every linear layer whose name ends with a target."""
    import torch

    names = [t.strip() for t in targets.split(",") if t.strip()]
    return sum(r * (m.in_features + m.out_features) for n, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in names))


def _layer_values(s: Shape, half: bool) -> float:
    """Values autograd keeps per token in one layer (module docstring)."""
    return (17 * s.hidden + 6 * s.kv if half else 11 * s.hidden + 4 * s.kv) + 4 * s.mlp


def _activations(s: Shape, cfg: DistillConfig, rows: int, tokens_per_row: int, half: bool) -> float:
    c = 2 if half else 4
    tokens = rows * tokens_per_row
    if cfg.gradient_checkpointing:
        layers = tokens * (s.layers * s.hidden + _layer_values(s, half)) * c
    else:
        layers = tokens * s.layers * _layer_values(s, half) * c
    masked = rows * (cfg.gen_length or 256) * cfg.rs_max
    head = 2 * tokens * s.vocab * c + 6 * masked * s.vocab * 4
    return layers + head


def plan(config: dict[str, Any], cfg: DistillConfig, devices: int = 1, prompt_length: int = PROMPT_LENGTH
         ) -> dict[str, Any]:
    """The memory plan of ``cfg`` for a teacher with this config.json, per process of ``devices``."""
    model_cfg, module = _meta_module(config)
    shape = _shape(model_cfg, module)
    params = sum(p.numel() for p in module.parameters())
    lora = cfg.lora_r > 0
    trainable = lora_parameters(module, cfg.lora_r, cfg.lora_targets) if lora else params
    n = devices if cfg.sharding == "fsdp" else 1
    held = 2 if cfg.dtype == "bfloat16" else 4
    half = cfg.dtype == "bfloat16" or cfg.autocast_bf16
    compute_copy = 0 if not half else (2 * shape.unit * 2 if n > 1 else 2 * params)
    if lora:
        weights = held * params / n + 4 * trainable + (2 * shape.unit * held if n > 1 else 0)
    else:
        weights = 4 * params / n + compute_copy
    gen = cfg.gen_length or 256
    rows = math.ceil(cfg.batch_size / (devices * cfg.grad_accum))
    parts = {
        "weights": weights,
        "teacher": 0 if lora else held * params,
        "gradients": 4 * trainable / n,
        "optimizer": 8 * trainable / n,
        "activations": _activations(shape, cfg, rows, prompt_length + gen, half),
    }
    parts = {k: int(v) for k, v in parts.items()}
    total = sum(parts.values())
    return {"parameters": params, "trainable_parameters": trainable, "per_device_bytes": total,
            "per_device_gb": round(total / GB, 2), "parts": parts,
            "parts_gb": {k: round(v / GB, 2) for k, v in parts.items()},
            "devices": devices, "sharding": cfg.sharding, "dtype": cfg.dtype, "lora_r": cfg.lora_r,
            "gradient_checkpointing": cfg.gradient_checkpointing, "batch_size": cfg.batch_size,
            "rows_per_micro_batch": rows, "gen_length": gen, "prompt_length": prompt_length,
            "assumption": f"every row holds a {prompt_length}-token prompt (--plan-prompt-length) and "
                          f"{gen} answer tokens"}


def read_config(teacher: str) -> dict[str, Any]:
    """The teacher's config.json (a bundled name or a directory)."""
    from fewstep.models.loading import resolve

    return json.loads((resolve(teacher) / "config.json").read_text(encoding="utf-8"))


def plan_for(cfg: DistillConfig, devices: int = 1, prompt_length: int = PROMPT_LENGTH) -> dict[str, Any]:
    return plan(read_config(cfg.teacher), cfg, devices, prompt_length)


def check_device_memory(cfg: DistillConfig, devices: int, device: str) -> None:
    """On a CUDA device, refuse in one line a run whose plan exceeds the device's memory (before any
    weight is loaded)."""
    import torch

    from fewstep.errors import ConfigError

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return
    p = plan_for(cfg, devices, 0)  # the shortest prompt: refuse only what cannot fit
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if p["per_device_bytes"] > total:
        raise ConfigError(f"the plan needs {p['per_device_gb']} GB per device ({p['parts_gb']}) but {device} has "
                          f"{total / GB:.1f} GB: use --lora-r, --dtype bfloat16, --gradient-checkpointing, "
                          f"--sharding fsdp or a smaller --batch-size (fewstep distill --plan)")


def write_plan(path: Path, p: dict[str, Any]) -> None:
    path.write_text(json.dumps(p, indent=2) + "\n")
