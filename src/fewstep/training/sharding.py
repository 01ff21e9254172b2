"""How ``fewstep distill`` spreads the student over processes: a full replica per process (PyTorch
DistributedDataParallel) or PyTorch FSDP (``--sharding fsdp``: ``fully_shard`` per layer and at the
root, so weights, gradients and AdamW states are sharded; with ``--dtype bfloat16`` the sharded
weights stay float32 and each unit is all-gathered in bfloat16 for its forward and backward,
gradients reduced in float32). The frozen teacher stays a replica in ``--dtype`` (inference only).

Under FSDP every process must run the same number of forwards and backwards (each is collective):
a process without rows in a micro-batch runs an idle one on a stand-in row with zero weight.
Checkpoints and exports gather the full state dict on rank 0 (the same keys as an unsharded run,
so a checkpoint is the same file whatever the sharding).

``accelerate launch`` is a launcher here: an accelerate config that asks for DeepSpeed, or for FSDP
without ``--sharding fsdp``, or for FSDP settings this engine does not run, is refused in one line
(:func:`check_launcher`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch

from fewstep.errors import ConfigError
from fewstep.parallel import Place
from fewstep.training.config import DistillConfig
from fewstep.training.student import layer_list

TRUE = ("1", "true", "yes")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE


def check_launcher(cfg: DistillConfig) -> None:
    """Refuse, in one line, an accelerate config that asks for what this run would not do."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("the accelerate config asks for DeepSpeed, which fewstep distill does not run: use "
                          "--sharding fsdp (PyTorch FSDP) with an accelerate config without DeepSpeed")
    if _env_true("ACCELERATE_USE_FSDP") and cfg.sharding != "fsdp":
        raise ConfigError("the accelerate config asks for FSDP: pass --sharding fsdp (fewstep shards the student "
                          "with PyTorch FSDP itself)")
    if cfg.sharding == "fsdp":
        strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").strip().upper()
        if strategy not in ("FULL_SHARD", "1"):
            raise ConfigError(f"the accelerate config asks for FSDP sharding strategy {strategy}; fewstep distill "
                              f"--sharding fsdp runs FULL_SHARD only")
        if _env_true("FSDP_OFFLOAD_PARAMS"):
            raise ConfigError("the accelerate config asks for FSDP CPU offload, which fewstep distill does not run")
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() == "fp16":
        raise ConfigError("the accelerate config asks for fp16 mixed precision: use --dtype bfloat16 (or float32)")


def check_objective(cfg: DistillConfig) -> None:
    if cfg.sharding == "fsdp" and (cfg.objective not in ("dscd", "mdlm") or cfg.lora_r):
        raise ConfigError("--sharding fsdp shards full fine-tuning with the dscd or mdlm objective; "
                          f"{'LoRA' if cfg.lora_r else cfg.objective} runs with --sharding none")


def sharded(cfg: DistillConfig, place: Place) -> bool:
    return cfg.sharding == "fsdp" and place.world > 1


@contextlib.contextmanager
def _no_sync(module) -> Iterator[None]:
    """FSDP's counterpart of DDP's ``no_sync``: gradients accumulate unreduced until the last micro-batch."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def wrap(student: torch.nn.Module, cfg: DistillConfig, place: Place, device: torch.device) -> Any:
    """The module the training step calls: the student itself, DDP around it, or the student sharded
    in place by FSDP (with a ``no_sync`` like DDP's)."""
    if place.world == 1:
        return student
    if not sharded(cfg, place):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if cfg.dtype == "bfloat16" else MixedPrecisionPolicy()
    for layer in layer_list(student):
        fully_shard(layer, mp_policy=policy)
    fully_shard(student, mp_policy=policy)
    student.no_sync = functools.partial(_no_sync, student)  # type: ignore[assignment]
    return student


def grad_norm(total: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP: its full value)."""
    full = getattr(total, "full_tensor", None)
    return float(full() if full is not None else total)


def full_state(student: torch.nn.Module, opt: torch.optim.Optimizer | None, cfg: DistillConfig, place: Place
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model, optimiser) state dicts with every weight whole, on CPU under FSDP (collective: every
    process calls it; rank 0 gets them, the others empty dicts), else the module's own."""
    if not sharded(cfg, place):
        return student.state_dict(), None if opt is None else opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = get_model_state_dict(student, options=options)
    return model, None if opt is None else get_optimizer_state_dict(student, opt, options=options)


def load_full_state(student: torch.nn.Module, opt: torch.optim.Optimizer, model: dict[str, Any],
                    optim: dict[str, Any], cfg: DistillConfig, place: Place) -> None:
    """Load whole state dicts (every process holds them) into the student and optimiser, sharding them."""
    if not sharded(cfg, place):
        student.load_state_dict(model, strict=not cfg.lora_r)  # a LoRA checkpoint holds the adapters only
        opt.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(student, model, options=options)
    set_optimizer_state_dict(student, opt, optim, options=options)


def idle_rows() -> torch.Tensor:
    """The stand-in rows of a process without rows under FSDP (row 0, weighted zero)."""
    return torch.zeros(1, dtype=torch.long)

