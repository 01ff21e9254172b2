"""Weight-only quantization of a loaded model (``--quantize``, ``load_model(..., quantize=...)``).

Methods (torchao, applied after the weights are loaded):

- ``int8``: symmetric int8 weights, one scale per output row (torchao ``Int8WeightOnlyConfig``);
  runs on every device, the CPU included.
- ``nf4``: 4-bit NormalFloat weights in blocks of 64 with double-quantized scales (torchao
  ``to_nf4``, QLoRA's format), dequantized per matrix product; CUDA only.
- ``int4``: 4-bit integer weights in groups of 128 (torchao ``Int4WeightOnlyConfig``, tinygemm
  kernel); CUDA of compute capability 8.0 or newer, bfloat16 weights (the default when ``dtype`` is
  not given).

What is quantized: every ``nn.Linear`` of the model except the output head (a linear layer as wide
as the embedding table), whose logits are the confidences every strategy thresholds. Embedding
tables, norms and routers that are not ``nn.Linear`` stay at the loaded precision; a layer whose
shape a 4-bit format cannot hold (nf4: a multiple of 16,384 weights; int4: input width a multiple
of 128) stays too. On CUDA the model is loaded on the CPU and each layer is moved to the GPU and
quantized in turn, so the GPU never holds the unquantized model.

A quantization the device cannot run is refused in one line (:class:`QuantizationError`) before
any weight is read. The method is recorded on the module (:func:`quantization_of`), so a drafter
loaded for this model is quantized the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fewstep.errors import ModelLoadError

METHODS = ("int8", "nf4", "int4")
CUDA_ONLY = ("nf4", "int4")
NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256
INT4_GROUP = 128
_ATTR = "fewstep_quantization"  # set on the quantized torch module


class QuantizationError(ModelLoadError):
    """A quantization that is unknown, or that this device, dtype or installation cannot run."""


def check(method: str, device: str | torch.device, dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """Refuse ``method`` where it cannot run, in one line; -> the dtype to load the weights in."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization {method!r}; choose one of {', '.join(METHODS)}")
    dev = torch.device(device)
    if method in CUDA_ONLY and dev.type != "cuda":
        raise QuantizationError(f"--quantize {method} runs on CUDA devices only (torchao's 4-bit kernels), not "
                                f"{dev.type}; use --quantize int8 here")
    if method in CUDA_ONLY and not torch.cuda.is_available():
        raise QuantizationError(f"--quantize {method} needs CUDA, and this torch ({torch.__version__}) has none")
    _torchao()
    if method == "int4":
        return _int4_dtype(dev, dtype)
    return dtype


def _int4_dtype(dev: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """int4's tinygemm kernel: bfloat16 weights, compute capability 8.0 or newer."""
    name = None if dtype is None else str(dtype).removeprefix("torch.")
    if name not in (None, "bfloat16"):
        raise QuantizationError(f"--quantize int4 needs bfloat16 weights, not {name}: pass --dtype bfloat16 or no "
                                "--dtype")
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        raise QuantizationError(f"--quantize int4 needs a GPU of compute capability 8.0 or newer (this one: "
                                f"{major}.{minor}); use --quantize nf4 or int8")
    return torch.bfloat16


@contextmanager
def quiet_import() -> Iterator[None]:
    """torchao logs a warning for each optional compiled kernel it cannot load on this machine (and
    torch one for torchao's enum registration): noise for weight-only inference."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torchao() -> Any:
    """The torchao package, imported quietly; a missing install is one line."""
    try:
        with quiet_import():
            import torchao.quantization as quantization
    except ImportError as e:
        raise QuantizationError(f"--quantize needs torchao (pip install 'fewstep[quant]'): {e}") from None
    return quantization


def load_quantized(load: Callable[..., Any], name_or_path: Any, device: str | torch.device,
                   dtype: torch.dtype | str | None, trust_remote_code: bool, method: str) -> Any:
    """``load(name_or_path, ...)`` (:func:`fewstep.models.loading.load_model`) with ``method``'s
    weights on ``device``: checked first, loaded on the CPU, then quantized layer by layer onto the device."""
    from fewstep.models.registry import BUILT_IN

    if str(name_or_path) in BUILT_IN:
        raise QuantizationError(f"the built-in model {name_or_path!r} has no weights to quantize")
    load_dtype = check(method, device, dtype)
    model = load(name_or_path, device="cpu", dtype=load_dtype, trust_remote_code=trust_remote_code)
    quantize_module(model.module, method, device)
    return model


def quantize_module(module: nn.Module, method: str, device: str | torch.device = "cpu") -> int:
    """Quantize ``module``'s linear layers (all but the output head) with ``method`` on ``device``,
    then move the rest of it there; -> the number of layers quantized."""
    convert = {"int8": _int8, "nf4": _nf4, "int4": _int4}[method]
    done = 0
    for lin in _linear_layers(module):
        lin.to(device)
        done += convert(lin)
    module.to(device)
    setattr(module, _ATTR, method)
    return done


def quantization_of(model: Any) -> str | None:
    """The quantization a model (an adapter or its torch module) was loaded with; None: full precision."""
    module = getattr(model, "module", model)
    return getattr(module, _ATTR, None) if isinstance(module, nn.Module) else None


def _linear_layers(module: nn.Module) -> list[nn.Linear]:
    """Every ``nn.Linear`` but the output head (as many outputs as an embedding table has rows)."""
    vocab = {m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)}
    return [m for m in module.modules() if isinstance(m, nn.Linear) and m.out_features not in vocab]


def _int8(lin: nn.Linear) -> int:
    q = _torchao()
    q.quantize_(lin, q.Int8WeightOnlyConfig(set_inductor_config=False))
    return 1


def _nf4(lin: nn.Linear) -> int:
    if lin.weight.numel() % (NF4_BLOCK * NF4_SCALER_BLOCK):
        return 0
    weight = _torchao().to_nf4(lin.weight.detach().contiguous(), NF4_BLOCK, NF4_SCALER_BLOCK)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return 1


def _int4(lin: nn.Linear) -> int:
    if lin.in_features % INT4_GROUP:
        return 0
    q = _torchao()
    q.quantize_(lin, q.Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d",
                                            set_inductor_config=False))
    return 1


def weight_bytes(module: nn.Module) -> int:
    """Bytes the module's parameters and buffers hold on their device (quantized tensors: their
    packed data and scales)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total


def _tensor_bytes(t: torch.Tensor) -> int:
    """A tensor's storage; a tensor subclass (torchao's) as the sum of its inner tensors."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n), torch.Tensor))
    return t.numel() * t.element_size()
