"""Training configuration (kept free of heavy imports so the CLI can build its options cheaply)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fewstep.errors import ConfigError


def option(default: Any, help: str) -> Any:
    """A config field with its command-line help text (``fewstep train|distill --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    kind: str = option("dlm", "what to train: dlm (a masked diffusion model) or ar (a causal drafter)")
    steps: int = option(4000, "optimiser steps")
    batch_size: int = option(256, "examples per optimiser step")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    warmup: int = option(100, "linear warm-up steps")
    min_lr_ratio: float = option(0.1, "cosine decay after warm-up down to lr times this")
    weight_decay: float = option(0.01, "AdamW weight decay")
    grad_clip: float = option(1.0, "clip the gradient norm to this")
    d_model: int = option(256, "hidden size")
    n_layers: int = option(4, "transformer layers")
    n_heads: int = option(4, "attention heads (d_model must be a multiple)")
    mlp_hidden: int = option(704, "hidden size of the SwiGLU MLP")
    gen_length: int = option(24, "answer region in tokens (answer + EOS, padded with EOS)")
    seed: int = option(0, "seed of the weights and of every step's data")
    save_every: int = option(50, "steps between resumable checkpoints")
    snapshot_every: int = option(500, "steps between exported snapshots (snapshots/step-N)")
    log_every: int = option(10, "steps between log lines")
    autocast_bf16: bool = option(True, "run forwards under bfloat16 autocast (weights and optimiser stay float32)")
    threads: int = option(0, "CPU threads (0: torch's default)")
    init_from: str = option("", "a model directory (Hugging Face layout) to start from instead of random weights")
    attention_block_length: int = option(0, "dlm: 0 full attention; N > 0 block-causal attention in blocks of N")

    def __post_init__(self) -> None:
        if self.kind not in ("dlm", "ar"):
            raise ConfigError(f"kind must be 'dlm' or 'ar', got {self.kind!r}")
        for name in ("steps", "batch_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "gen_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError("d_model must be a multiple of n_heads")
        self._check_model()
        for name in ("save_every", "snapshot_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        self._check_optimiser()
        if self.attention_block_length < 0:
            raise ConfigError(f"attention_block_length must be >= 0, got {self.attention_block_length}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError(f"warmup and threads must be >= 0, got {self.warmup} and {self.threads}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")

    def _check_model(self) -> None:
        """What a new lab model of this shape can hold (before anything is trained): rotary positions
        turn pairs of dimensions, so an even head size; block attention only in the diffusion model;
        the task's prompts and answers within its context (:func:`fewstep.training.lab.check_fits`)."""
        head = self.d_model // self.n_heads
        if head % 2:
            raise ConfigError(f"d_model / n_heads = {head}: the head size must be even (rotary positions turn pairs "
                              "of dimensions)")
        if self.kind == "ar" and self.attention_block_length:
            raise ConfigError("attention_block_length is for --kind dlm only (a causal drafter attends causally)")
        from fewstep.training.lab import check_fits

        check_fits(self.kind, self.gen_length)

    def _check_optimiser(self) -> None:
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr out of range (0, 1): {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio out of range [0, 1]: {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip}")


@dataclass(frozen=True)
class DistillConfig:
    """``fewstep distill``: DSCD (CD4LM, arXiv 2601.02236; design.md section 1), every knob an option.

    Defaults are the paper's where it gives one (T 2, both clips 5, lambda 0.9 held for 10% of the
    steps then cosine to 0.5, the mask ratios, AdamW, lr 5e-6, 200 warm-up steps, grad clip 1.0,
    full fine-tuning, early stop on validation loss). Where it gives none (batch, steps, weight
    decay, the schedule after warm-up, validation size and patience) the default is marked below.

    For the lab model tiny-dlm (3.3M parameters trained from scratch at lr 1.5e-3) the paper's lr
    5e-6 cannot apply: Adam moves a weight by at most about lr per step, 0.003 over a CPU budget of
    600 steps, a small fraction of the weights' scale (it is sized for a fine-tune of an 8B model
    over thousands of steps); the lab run uses lr 2e-4 with 50 warm-up steps, and 200 warm-up steps
    would be a third of its 600 (README "tiny-dlm-cd").
    """

    teacher: str = option("tiny-dlm", "the teacher: a bundled name or a masked diffusion model directory")
    objective: str = option("dscd", "dscd (CD4LM); mdlm, the plain masked-diffusion loss (the ablation); edit, judge "
                            "visible tokens (edit_* options); trajectory, from states of the teacher's own "
                            "decoding to its answer (traj_* options)")
    task: str = option("arith", "training data: this task's training split, unless --data names a JSONL file")
    data: str = option("", "JSONL training data with question and answer (or solution) fields")
    gen_length: int = option(0, "answer region: answer + EOS up to this length; 0: the teacher's decode default")
    steps: int = option(1000, "optimiser steps (not given by the paper)")
    batch_size: int = option(64, "examples per optimiser step over all processes (not given by the paper)")
    grad_accum: int = option(1, "micro-batches per optimiser step and process")
    lr: float = option(5e-6, "peak learning rate (AdamW)")
    warmup: int = option(200, "linear warm-up steps")
    min_lr_ratio: float = option(1.0, "cosine decay after warm-up down to lr times this (1.0: constant; not given by "
                                 "the paper)")
    weight_decay: float = option(0.0, "AdamW weight decay (not given by the paper)")
    grad_clip: float = option(1.0, "clip the gradient norm to this")
    temperature: float = option(2.0, "DSCD: distillation temperature T")
    kl_clip: float = option(5.0, "DSCD: clip of each position's KL term")
    ce_clip: float = option(5.0, "DSCD: clip of each position's cross-entropy term")
    lambda_start: float = option(0.9, "DSCD: weight of the distillation term at the start")
    lambda_end: float = option(0.5, "DSCD: weight of the distillation term at the end")
    lambda_hold: float = option(0.1, "DSCD: fraction of the steps held at lambda_start before the cosine")
    rs_min: float = option(0.4, "DSCD: student mask ratio r_s ~ U(rs_min, rs_max)")
    rs_max: float = option(0.9, "DSCD: upper end of the student mask ratio")
    rt_scale_min: float = option(0.3, "DSCD: teacher ratio r_t = clip(r_s * U(rt_scale_min, rt_scale_max), rt_min, "
                                 "rt_max)")
    rt_scale_max: float = option(0.7, "DSCD: upper end of the teacher ratio's scale")
    rt_min: float = option(0.1, "DSCD: smallest teacher mask ratio")
    rt_max: float = option(0.6, "DSCD: largest teacher mask ratio")
    visible_target: str = option("clean", "DSCD: target where the teacher sees the token: clean (one-hot) or logits")
    edit_random: float = option(0.05, "edit: fraction of rows whose visible answer tokens are randomly replaced")
    edit_self: float = option(0.05, "edit: fraction of rows showing the model's own few-step answer (on-policy errors)")
    edit_drafter: float = option(0.15, "edit: fraction of rows showing edit_drafter's draft (its errors)")
    edit_rate: float = option(0.3, "edit: a random row replaces each visible token with probability U(0, edit_rate)")
    edit_visible: float = option(1.0, "edit: probability that a corrupted row has no masked position (a warm start's "
                                 "canvas)")
    edit_visible_weight: float = option(1.0, "edit: loss weight of a visible position")
    edit_inverse_t: bool = option(True, "edit: a masked position weighs 1/t (LLaDA's objective); false: 1")
    edit_self_steps: int = option(4, "edit: llada steps of the model's own answers")
    edit_drafter_name: str = option("tiny-ar", "edit: the drafter (bundled name or causal LM directory)")
    edit_interpolate: float = option(0.0, "edit: fraction of drafter rows fed interpolated embeddings at masked "
                                     "positions")
    traj_steps: int = option(0, "trajectory: the teacher's llada steps per rollout (0: one token per step)")
    traj_verified: bool = option(True, "trajectory: only rollouts whose answer is right count")
    certainty_weight: float = option(0.0, "trajectory: weight of the entropy at masked positions the student predicts "
                                     "right (dParallel's certainty forcing)")
    rollouts: str = option("", "trajectory: a directory of the teacher's rollouts written beforehand by fewstep "
                           "rollouts (any strategy); empty: roll out at every step")
    lora_r: int = option(0, "0: full fine-tuning; > 0: LoRA of this rank through peft")
    lora_alpha: int = option(16, "LoRA scaling alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_targets: str = option("q_proj,k_proj,v_proj,attn_out", "comma-separated module names LoRA adapts")
    val_size: int = option(256, "held-out examples (not given by the paper)")
    val_every: int = option(50, "steps between validations")
    patience: int = option(5, "validations without improvement before stopping; 0: never stop early")
    seed: int = option(0, "seed of every step's data and masks")
    save_every: int = option(25, "steps between resumable checkpoints")
    log_every: int = option(1, "steps between lines of metrics.jsonl")
    autocast_bf16: bool = option(True, "run forwards under bfloat16 autocast")
    device: str = option("cpu", "cpu or cuda (one GPU per process: cuda:LOCAL_RANK under a launcher)")
    threads: int = option(0, "CPU threads (0: torch's default, one per process under a launcher on CPU)")
    save_dtype: str = option("float32", "dtype of the exported student weights")
    dtype: str = option("float32", "dtype of the frozen weights the run holds (the teacher, LoRA's base) and, with "
                        "bfloat16, of the forwards; trained weights, gradients and AdamW states stay float32")
    sharding: str = option("none", "none: a full replica per process (data parallel); fsdp: PyTorch FSDP shards the "
                           "student, its gradients and optimiser states over the processes")
    gradient_checkpointing: bool = option(False, "recompute each layer's activations in the backward pass")

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_counts()
        self._check_ranges()
        if self.batch_size < self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is smaller than grad_accum {self.grad_accum}")

    def _check_choices(self) -> None:
        if self.objective not in ("dscd", "mdlm", "edit", "trajectory"):
            raise ConfigError(f"objective must be 'dscd', 'mdlm', 'edit' or 'trajectory', got {self.objective!r}")
        if self.rollouts and self.objective != "trajectory":
            raise ConfigError("rollouts are the trajectory objective's: add --objective trajectory")
        if self.visible_target not in ("clean", "logits"):
            raise ConfigError(f"visible_target must be 'clean' or 'logits', got {self.visible_target!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.sharding not in ("none", "fsdp"):
            raise ConfigError(f"sharding must be 'none' or 'fsdp', got {self.sharding!r}")
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"save_dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")

    def _check_counts(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "val_every", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("gen_length", "warmup", "lora_r", "val_size", "patience", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _check_ranges(self) -> None:
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr out of range (0, 1): {self.lr}")
        if self.temperature <= 0 or self.kl_clip <= 0 or self.ce_clip <= 0 or self.grad_clip <= 0:
            raise ConfigError("temperature, kl_clip, ce_clip and grad_clip must be positive")
        for name in ("min_lr_ratio", "lambda_start", "lambda_end", "lambda_hold", "lora_dropout", "edit_random",
                     "edit_self", "edit_drafter", "edit_rate", "edit_visible", "edit_interpolate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.edit_random + self.edit_self + self.edit_drafter > 1:
            raise ConfigError("edit_random + edit_self + edit_drafter must not exceed 1 (the other rows are clean)")
        if self.traj_steps < 0 or self.certainty_weight < 0:
            raise ConfigError("traj_steps and certainty_weight must be >= 0")
        if self.edit_visible_weight < 0 or self.edit_self_steps <= 0:
            raise ConfigError("edit_visible_weight must be >= 0 and edit_self_steps positive")
        if not 0 < self.rs_min <= self.rs_max <= 1:
            raise ConfigError(f"need 0 < rs_min <= rs_max <= 1, got {self.rs_min}, {self.rs_max}")
        if not 0 <= self.rt_scale_min <= self.rt_scale_max <= 1 or not 0 <= self.rt_min <= self.rt_max <= 1:
            raise ConfigError("need 0 <= rt_scale_min <= rt_scale_max <= 1 and 0 <= rt_min <= rt_max <= 1")
