"""Teacher and student of ``fewstep distill``: loading the frozen teacher, the trainable copy (full or
LoRA), their logits, and the student saved in the teacher's Hugging Face layout."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import torch

from fewstep.errors import ConfigError
from fewstep.files import atomic_replace_dir
from fewstep.training.config import DistillConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def load_teacher(cfg: DistillConfig, device: str):
    """The teacher (a :class:`~fewstep.models.adapter.DiffusionModel`), frozen, in eval mode."""
    from fewstep.models.loading import load_model

    teacher = load_model(cfg.teacher, device=device)
    if teacher.kind != "diffusion":
        raise ConfigError(f"teacher {cfg.teacher!r} is a {teacher.kind} model, not a masked diffusion model")
    teacher.module.eval().requires_grad_(False)
    return teacher


def make_student(teacher_module: torch.nn.Module, cfg: DistillConfig) -> torch.nn.Module:
    """A trainable copy of the teacher: every weight, or LoRA adapters (``lora_r`` > 0) through peft."""
    student = copy.deepcopy(teacher_module).train().requires_grad_(True)
    if not cfg.lora_r:
        return student
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    names = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(f"LoRA target(s) {missing or targets} match no linear layer of the teacher "
                          f"(its linear layers: {', '.join(leaves)})")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(student, lora)


def plain_module(student: torch.nn.Module) -> torch.nn.Module:
    """The student as a teacher-shaped module: LoRA merged into a copy, else the student itself."""
    merge = getattr(copy.deepcopy(student), "merge_and_unload", None) if hasattr(student, "peft_config") else None
    return merge() if merge is not None else student


def save_model(module: torch.nn.Module, teacher_dir: Path, out: Path, dtype: torch.dtype) -> None:
    """The student in the teacher's layout: the teacher's files (config, tokenizer, generation_config.json,
    modelling code) with the student's weights; written beside ``out`` and renamed into place."""
    def fill(tmp: Path) -> None:
        for f in teacher_dir.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(f, tmp / f.name)
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        save_pretrained = getattr(module, "save_pretrained", None)
        if save_pretrained is not None:
            save_pretrained(tmp, state_dict=state, safe_serialization=True)
        else:
            from safetensors.torch import save_file

            save_file(state, tmp / "model.safetensors")
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable like the teacher's files, whatever mode the writer chose

    atomic_replace_dir(out, fill)


def logits_of(module, ids: torch.Tensor, att: torch.Tensor, shifted: bool,
              embeds: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, V] logits with ``logits[:, i]`` predicting position i (Dream-style models realigned);
    ``embeds`` [B, T, D]: the input embeddings instead of the ids' own."""
    if embeds is None:
        out = module(input_ids=ids, attention_mask=att).logits
    else:
        out = module(inputs_embeds=embeds, attention_mask=att).logits
    return torch.cat([out[:, :1], out[:, :-1]], dim=1) if shifted else out


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()

