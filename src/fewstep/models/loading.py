"""``fewstep.load_model``: bundled lab models by name, or a directory in Hugging Face layout.

Directories are recognised by config.json: ``model_type: llada`` loads fewstep's own LLaDA
implementation (real LLaDA checkpoints and ``tiny-dlm`` alike, sharded safetensors included);
any causal LM that transformers knows loads as a :class:`CausalModel`. An optional
``fewstep.json`` beside config.json holds decode defaults (``{"decode_defaults": {...}}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ModelLoadError
from fewstep.models.adapter import CausalModel, DiffusionModel

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = ("tiny-dlm", "tiny-ar", "tiny-dlm-cd")


def resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s in BUNDLED:
        path = ASSETS / s
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"bundled model {s!r} is not installed (missing {path}/config.json)")
        return path
    path = Path(s).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"unknown model {s!r}: not a bundled name ({', '.join(BUNDLED)}) nor a model directory"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} is not a JSON object: not a model configuration")
    return obj


DTYPES = ("float32", "float16", "bfloat16", "float64")


def _check_device(device: str | torch.device) -> None:
    """Refuse a device this torch cannot provide, in one line, before any weight moves."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this torch ({torch.__version__}) has no usable CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ModelLoadError(f"device {device!r}: not supported (cpu, cuda, cuda:N or mps)")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The floating dtype asked for (a name or a torch dtype), or None for the stored precision."""
    if dtype is None:
        return None
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not (path / f).is_file():
            raise ModelLoadError(f"{path} is missing weight file {f}")
        try:
            state.update(load_file(path / f))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"corrupt weight file {path / f}: {e}") from None
    return state


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars while it loads our files."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


@contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip torch.nn.init while a module whose weights are loaded next is built on the meta device.
    Initialising meta tensors does no work, but some init functions (``normal_``) go through torch's
    reference implementations, whose first use imports torch._dynamo: seconds of start-up for nothing."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a bad tokenizer directory
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {e}") from None


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> DiffusionModel | CausalModel:
    """Load a model for decoding. ``dtype`` (e.g. ``torch.bfloat16`` or ``"bfloat16"``) defaults to
    the stored precision; ``device`` to the CPU. The name ``gold`` gives the built-in
    :class:`~fewstep.models.gold.GoldModel` (a directory called gold: pass ``./gold``)."""
    if str(name_or_path) == "gold":
        from fewstep.models.gold import GoldModel

        return GoldModel()  # type: ignore[return-value]
    path = resolve(name_or_path)
    config = _read_json(path / "config.json")
    extra = _read_json(path / "fewstep.json") if (path / "fewstep.json").is_file() else {}
    dtype = _dtype(dtype)
    _check_device(device)
    kind = config.get("model_type")
    name = str(name_or_path)
    if kind == "llada":
        return _load_llada(path, config, extra, name, device, dtype)
    if str(kind).lower() == "dream":
        return _load_remote_diffusion(path, config, extra, name, device, dtype, shifted=True)
    return _load_causal(path, config, extra, name, device, dtype)


def load_lab_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> DiffusionModel | None:
    """A bundled LLaDA lab model (``tiny-dlm``) as :func:`load_model` loads it, but with the tokenizer
    loaded without transformers (:mod:`fewstep.models.lab_tokenizer`: half a second less start-up);
    None when ``name`` is not a bundled LLaDA model."""
    if name not in BUNDLED:
        return None
    path = resolve(name)
    config = _read_json(path / "config.json")
    if config.get("model_type") != "llada":
        return None
    from fewstep.models.lab_tokenizer import LabTokenizer

    extra = _read_json(path / "fewstep.json") if (path / "fewstep.json").is_file() else {}
    dtype = _dtype(dtype)
    _check_device(device)
    return _load_llada(path, config, extra, name, device, dtype, tokenizer=LabTokenizer)


def _load_llada(path, config, extra, name, device, dtype, tokenizer=None) -> DiffusionModel:
    from fewstep.models.llada import LLaDAConfig, LLaDAModel

    try:
        cfg = LLaDAConfig.from_dict(config)
        with torch.device("meta"), _no_weight_init():
            module = LLaDAModel(cfg)
    except (TypeError, ValueError, AttributeError, RuntimeError, ZeroDivisionError) as e:
        raise ModelLoadError(f"invalid LLaDA config in {path}: {e}") from None
    state = _state_dict(path)
    if cfg.weight_tying:
        state.pop("model.transformer.ff_out.weight", None)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {path} do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    try:
        module.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"weights in {path} do not match the config: {str(e).splitlines()[0]}") from None
    module = module.to(device=device, dtype=dtype or torch.float32).eval()
    tok = (tokenizer or _tokenizer)(path)
    stop = tuple(i for i in [tok.convert_tokens_to_ids("<|eot_id|>")] if isinstance(i, int) and i != tok.unk_token_id)
    return DiffusionModel(
        module=module,
        tokenizer=tok,
        name=name,
        eos_id=cfg.eos_token_id,
        pad_id=cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id,
        max_length=cfg.max_sequence_length,
        stop_ids=stop,
        decode_defaults=extra.get("decode_defaults", {}),
        mask_id=cfg.mask_token_id,
    )


def _load_remote_diffusion(path, config, extra, name, device, dtype, shifted: bool) -> DiffusionModel:
    """A diffusion LM shipped with its own modelling code (Dream): loaded through transformers'
    remote-code path from the directory itself (no hub access). Dream predicts position i from the
    logits at i - 1, so the adapter realigns them (``shifted_logits``)."""
    from transformers import AutoModel

    if "auto_map" not in config:
        raise ModelLoadError(
            f"{path}: a {config.get('model_type')} model needs its modelling code (auto_map) in the directory"
        )
    try:
        with _quiet_transformers():
            module = AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=dtype or torch.bfloat16)
    except Exception as e:  # remote code can raise anything
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelLoadError(f"cannot load {path}: {first_line}") from None
    tok = _tokenizer(path)
    if tok.mask_token_id is None:
        raise ModelLoadError(f"the tokenizer of {path} has no mask token")
    return DiffusionModel(
        module=module.to(device).eval(),
        tokenizer=tok,
        name=name,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        max_length=int(config.get("max_position_embeddings", 2048)),
        decode_defaults=extra.get("decode_defaults", {}),
        mask_id=tok.mask_token_id,
        shifted_logits=shifted,
    )


def _load_causal(path, config, extra, name, device, dtype) -> CausalModel:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            module = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    except Exception as e:  # unknown architecture, corrupt or missing weights
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelLoadError(f"cannot load {path} as a causal LM: {first_line}") from None
    module = module.to(device).eval()
    tok = _tokenizer(path)
    eos = tok.eos_token_id if tok.eos_token_id is not None else config.get("eos_token_id")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return CausalModel(
        module=module,
        tokenizer=tok,
        name=name,
        eos_id=eos,
        pad_id=pad,
        max_length=int(config.get("max_position_embeddings", 2048)),
        decode_defaults=extra.get("decode_defaults", {}),
    )
