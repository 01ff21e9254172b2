"""Teacher and student of ``fewstep distill``: loading the frozen teacher, the trainable student (full or
LoRA), their logits, and the student saved in the teacher's Hugging Face layout.

Precision (``--dtype``): the teacher (and LoRA's frozen base) is held in ``dtype``; a fully fine-tuned
student keeps float32 weights (the master copy: AdamW's updates at the paper's lr 5e-6 vanish in
bfloat16's 8-bit mantissa), and its forwards run in bfloat16 under autocast or FSDP's mixed precision.

LoRA (``--lora-r``) shares the teacher: the adapters are injected into the teacher's own module, and
the teacher is that module with the adapters disabled (:func:`teacher_view`): one copy of the base
weights. The export merges each adapted weight on its own (:func:`merged_state`), never a second copy
of the model."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ConfigError
from fewstep.files import atomic_replace_dir
from fewstep.training.config import DistillConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def load_teacher(cfg: DistillConfig, device: str):
    """The teacher (a :class:`~fewstep.models.adapter.DiffusionModel`), frozen, in eval mode."""
    from fewstep.models.loading import load_model

    teacher = load_model(cfg.teacher, device=device, dtype=cfg.dtype)
    if teacher.kind != "diffusion":
        raise ConfigError(f"teacher {cfg.teacher!r} is a {teacher.kind} model, not a masked diffusion model")
    teacher.module.eval().requires_grad_(False)
    return teacher


def make_student(teacher_module: torch.nn.Module, cfg: DistillConfig) -> torch.nn.Module:
    """The trainable student: a float32 copy of every weight, or LoRA adapters (``lora_r`` > 0, through
    peft) injected into the teacher's own module (float32 adapters on the frozen base)."""
    if not cfg.lora_r:
        student = copy.deepcopy(teacher_module).to(torch.float32).train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            checkpoint_layers(student)
        return student
    from peft import LoraConfig, get_peft_model

    student = teacher_module.train()

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    names = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(f"LoRA target(s) {missing or targets} match no linear layer of the teacher "
                          f"(its linear layers: {', '.join(leaves)})")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    peft_model = get_peft_model(student, lora)
    if cfg.gradient_checkpointing:
        checkpoint_layers(peft_model)
    return peft_model


def layer_list(module: torch.nn.Module) -> torch.nn.ModuleList:
    """The module's transformer layers: its longest ModuleList."""
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{type(module).__name__} has no list of layers to checkpoint or shard")
    return max(lists, key=len)


def _checkpointed(forward, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_layers(module: torch.nn.Module) -> None:
    """Gradient checkpointing: each layer keeps its input only and recomputes the rest in the backward pass."""
    for layer in layer_list(module):
        layer.forward = functools.partial(_checkpointed, layer.forward)  # type: ignore[method-assign]


def is_lora(student: torch.nn.Module) -> bool:
    return hasattr(student, "peft_config")


def teacher_view(student: Any) -> contextlib.AbstractContextManager:
    """The block in which the teacher's module is the teacher: with LoRA, the shared base with the
    adapters disabled; else nothing to do (the teacher is its own module)."""
    return student.disable_adapter() if is_lora(student) else contextlib.nullcontext()


def merged_state(student: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The student's weights under the teacher's names, LoRA merged one weight at a time (only the
    adapted weights are new tensors); a plain student's own state."""
    if not is_lora(student):
        yield from student.state_dict().items()
        return
    base = student.get_base_model()
    lora_layers = {name: m for name, m in base.named_modules() if hasattr(m, "get_delta_weight")}
    for name, value in base.state_dict().items():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        layer = lora_layers.get(owner.removesuffix(".base_layer"))
        if layer is not None and owner.endswith(".base_layer") and leaf == "weight":
            with torch.no_grad():
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                value = value + delta.to(value.dtype)
        yield name.replace(".base_layer.", "."), value


def plain_module(student: torch.nn.Module) -> torch.nn.Module:
    """The student as a teacher-shaped module: LoRA merged into a copy, else the student itself."""
    merge = getattr(copy.deepcopy(student), "merge_and_unload", None) if is_lora(student) else None
    return merge() if merge is not None else student


def release_freed_memory() -> None:
    """Hand the heap the C allocator keeps after a step (activations, gradients already freed) back
    to the system (glibc's ``malloc_trim``; nothing elsewhere), so that an export's merged copies
    do not stack on it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def save_model(module: torch.nn.Module, teacher_dir: Path, out: Path, dtype: torch.dtype,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """The student in the teacher's layout: the teacher's files (config, tokenizer, generation_config.json,
    modelling code) with the student's weights (``state``, else the module's); written beside ``out``
    and renamed into place."""
    release_freed_memory()

    def fill(tmp: Path) -> None:
        for f in teacher_dir.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(f, tmp / f.name)
        if state is None and is_lora(module):  # merged one weight at a time, never all at once
            save_streamed(tmp / "model.safetensors", lambda: merged_state(module), dtype)
        else:
            items = merged_state(module) if state is None else state.items()
            weights = {k: v.detach().to("cpu", dtype).contiguous() for k, v in items}
            save_pretrained = getattr(module, "save_pretrained", None)
            if save_pretrained is not None:
                save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            else:
                from safetensors.torch import save_file

                save_file(weights, tmp / "model.safetensors")
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable like the teacher's files, whatever mode the writer chose

    atomic_replace_dir(out, fill)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def save_streamed(path: Path, items: Callable[[], Iterator[tuple[str, torch.Tensor]]], dtype: torch.dtype) -> None:
    """A safetensors file of the tensors ``items()`` yields, in ``dtype``, written one tensor at a
    time (``items`` is called twice: once for the header's names and shapes, once for the bytes), so
    that at most one yielded tensor is alive at once. The format: an 8-byte little-endian header
    length, the JSON header (names, dtypes, shapes, byte offsets; padded to 8 bytes), the bytes."""
    import json
    import struct

    size = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, value in items():
        n = value.numel() * size
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, value in items():
            f.write(value.detach().to("cpu", dtype).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def logits_of(module, ids: torch.Tensor, att: torch.Tensor, shifted: bool,
              embeds: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, V] logits with ``logits[:, i]`` predicting position i (Dream-style models realigned);
    ``embeds`` [B, T, D]: the input embeddings instead of the ids' own."""
    if embeds is None:
        out = module(input_ids=ids, attention_mask=att).logits
    else:
        out = module(inputs_embeds=embeds, attention_mask=att).logits
    return torch.cat([out[:, :1], out[:, :-1]], dim=1) if shifted else out


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and float32 values."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()

