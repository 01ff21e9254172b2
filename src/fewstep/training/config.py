"""Training configuration (kept free of heavy imports so the CLI can build its options cheaply)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fewstep.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "dlm"  # "dlm" (masked diffusion) or "ar" (causal drafter)
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 704
    gen_length: int = 24
    seed: int = 0
    save_every: int = 50
    snapshot_every: int = 500
    log_every: int = 10
    autocast_bf16: bool = True
    threads: int = 0  # 0: leave torch's default
    init_from: str = ""  # a model directory (Hugging Face layout) to start from instead of random weights

    def __post_init__(self) -> None:
        if self.kind not in ("dlm", "ar"):
            raise ConfigError(f"kind must be 'dlm' or 'ar', got {self.kind!r}")
        for name in ("steps", "batch_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "gen_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError("d_model must be a multiple of n_heads")
        for name in ("save_every", "snapshot_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
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
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError(f"warmup and threads must be >= 0, got {self.warmup} and {self.threads}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
