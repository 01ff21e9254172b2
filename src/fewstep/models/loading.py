"""``fewstep.load_model``: bundled lab models by name, or a directory in Hugging Face layout.

Directories are recognised by config.json's ``architectures`` or ``model_type``
(:func:`fewstep.models.registry.for_config`): an architecture fewstep implements (``llada``, ``Dream``,
``llada2_moe``, ``lladamoe``, ``sdar``, ``Fast_dLLM_Qwen``) loads with fewstep's own code,
through its registry entry's builder here (real checkpoints and ``tiny-dlm`` alike, sharded
safetensors included); any causal LM that transformers knows loads as a :class:`CausalModel`. None
of these runs code from the directory. A directory whose architecture exists only as its own code
(``auto_map``) loads only with ``trust_remote_code=True``.

Decode defaults come from ``generation_config.json`` (the fewstep keys in it: ``gen_length``,
``steps``, ..., and ``warm_start``: the settings recommended for a warm start); directories written
before that hold them in ``fewstep.json`` (``{"decode_defaults": {...}}``), still read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ModelLoadError
from fewstep.models.adapter import CausalModel, DiffusionModel
from fewstep.models.directory import DECODE_KEYS, _read_json, decode_defaults, write_decode_defaults  # noqa: F401
from fewstep.models.registry import ARCHITECTURES, BUILT_IN, find, for_config, native, target

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = ("tiny-dlm", "tiny-ar", "tiny-dlm-cd", "tiny-dlm-edit", "tiny-dlm-traj")


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
    """Silence transformers' warnings and progress bars while it loads our files (and those of
    torchao, which transformers imports when it is installed)."""
    from transformers.utils import logging

    from fewstep.models.quantize import quiet_import

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with quiet_import():
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


def needs_remote_code(config: dict[str, Any]) -> bool:
    """A config.json whose architecture neither fewstep nor this transformers implements, with its
    own modelling code named in ``auto_map``."""
    return not native(config) and not transformers_knows(config) and bool(config.get("auto_map"))


def transformers_knows(config: dict[str, Any]) -> bool:
    from transformers import CONFIG_MAPPING

    return str(config.get("model_type")) in CONFIG_MAPPING


def _tokenizer(path: Path, trust_remote_code: bool = False, fallback: str | None = None):
    """The directory's tokenizer, never prompting. A tokenizer that is remote code (``auto_map`` in
    tokenizer_config.json) runs only with ``trust_remote_code``; without it the directory's
    tokenizer files are read by transformers' own ``fallback`` class (e.g. Qwen2's for Dream)."""
    import transformers
    from transformers import AutoTokenizer

    tok_cfg = path / "tokenizer_config.json"
    remote = tok_cfg.is_file() and "AutoTokenizer" in _read_json(tok_cfg).get("auto_map", {})
    try:
        with _quiet_transformers():
            if remote and not trust_remote_code:
                if fallback is None:
                    raise ModelLoadError(
                        f"the tokenizer of {path} is its own code (auto_map in tokenizer_config.json): "
                        "pass trust_remote_code=True (--trust-remote-code) to run it"
                    )
                return getattr(transformers, fallback).from_pretrained(str(path))
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a bad tokenizer directory
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {first_line}") from None


# Built-in models that are no directory: the class, imported when asked for. The gold model answers
# task examples with their reference solutions, so it lives with evaluation, above this layer.
def load_model(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    quantize: str | None = None,
) -> DiffusionModel | CausalModel:
    """Load a model for decoding. ``dtype`` (e.g. ``torch.bfloat16`` or ``"bfloat16"``) defaults to
    the stored precision on an accelerator and to float32 on the CPU (where half-precision matmuls
    are slower and round more: ask for them explicitly; the bundled bfloat16 lab models are stored so
    only to stay small); ``device`` to the CPU. The name ``gold`` gives the built-in
    :class:`~fewstep.evaluation.gold.GoldModel` (a directory called gold: pass ``./gold``).

    ``trust_remote_code``: run modelling or tokenizer code shipped in the directory, for an
    architecture fewstep and transformers do not implement (never needed for fewstep's own
    architectures, :mod:`fewstep.models.registry`).

    ``quantize``: ``int8``, ``nf4`` or ``int4`` weight-only quantization after loading
    (:mod:`fewstep.models.quantize`; torchao); None keeps the weights as loaded."""
    if quantize is not None:
        from fewstep.models.quantize import load_quantized

        return load_quantized(load_model, name_or_path, device, dtype, trust_remote_code, quantize)
    if str(name_or_path) in BUILT_IN:
        return target(BUILT_IN[str(name_or_path)])()
    if not isinstance(trust_remote_code, bool):
        raise ModelLoadError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    path = resolve(name_or_path)
    config = _read_json(path / "config.json")
    defaults = decode_defaults(path)
    _check_device(device)
    dtype = _dtype(dtype) or (torch.float32 if torch.device(device).type == "cpu" else None)
    arch = for_config(config)
    if arch is not None:
        return target(arch.builder)(path, config, defaults, str(name_or_path), device, dtype, trust_remote_code)
    _check_causal(path, config, trust_remote_code)
    return _load_causal(path, config, defaults, str(name_or_path), device, dtype, trust_remote_code)


def _check_causal(path: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """Refuse a directory that transformers does not know, or knows only by running its code unasked."""
    kind = config.get("model_type")
    if needs_remote_code(config) and not trust_remote_code:
        raise ModelLoadError(
            f"{path}: model type {kind!r} is the directory's own code (auto_map in config.json), which fewstep "
            "does not run unless asked: pass trust_remote_code=True (--trust-remote-code) to run it"
        )
    if not transformers_knows(config) and not needs_remote_code(config):
        ours = ", ".join(a.model_type for a in ARCHITECTURES)
        raise ModelLoadError(
            f"{path}: unknown architecture: model_type {kind!r} is not one fewstep implements "
            f"({ours}) nor one this transformers knows, and the directory ships no code for it"
        )


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
    if for_config(config) is not find("llada"):
        return None
    from fewstep.models.lab_tokenizer import LabTokenizer

    dtype = _dtype(dtype)
    _check_device(device)
    return load_llada(path, config, decode_defaults(path), name, device, dtype, False, tokenizer=LabTokenizer)


def _checked_state(path: Path, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``module`` (built on the meta device): the names and shapes must match exactly."""
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


def _build(path: Path, what: str, make):
    """``make()`` on the meta device; a config error becomes one ModelLoadError line naming ``path``."""
    try:
        with torch.device("meta"), _no_weight_init():
            return make()
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except (TypeError, ValueError, AttributeError, RuntimeError, ZeroDivisionError, KeyError) as e:
        raise ModelLoadError(f"invalid {what} config in {path}: {e}") from None


def _native(path: Path, config: dict[str, Any], tied_head: str | None, device, dtype) -> tuple[Any, torch.nn.Module]:
    """fewstep's own module for ``config`` (its registry entry's config and module classes) with the
    directory's weights (``tied_head``: the output head's name when it is tied to the embeddings,
    dropped if a checkpoint stores it anyway)."""
    arch = for_config(config)
    assert arch is not None, "a builder is called for its own architecture"
    config_cls, model_cls = target(arch.config), target(arch.module)
    cfg = _build(path, arch.name, lambda: config_cls.from_dict(config))
    module = _build(path, arch.name, lambda: model_cls(cfg))
    state = _state_dict(path)
    if tied_head is not None:
        state.pop(tied_head, None)
    _checked_state(path, module, state)
    # dtype None: each weight in its stored precision (a bfloat16 checkpoint stays bfloat16)
    return cfg, (module.to(device=device) if dtype is None else module.to(device=device, dtype=dtype)).eval()


def _fallback(config: dict[str, Any]) -> str | None:
    """The transformers tokenizer class that reads the directory's tokenizer files without their code."""
    arch = for_config(config)
    return arch.tokenizer_fallback if arch is not None else None


def _exact_cache_default(module: torch.nn.Module, defaults: dict[str, Any]) -> dict[str, Any]:
    """A block-causal model decodes with ``cache=dual`` unless told otherwise: there the cache is
    exact (a finished block never attends to a later one), so it only saves time."""
    from fewstep.models.blockcausal import attention_block_length

    return {"cache": "dual", **defaults} if attention_block_length(module) > 0 else defaults


def load_llada(path, config, defaults, name, device, dtype, trust_remote_code, tokenizer=None) -> DiffusionModel:
    tied = "model.transformer.ff_out.weight" if config.get("weight_tying", True) else None
    cfg, module = _native(path, config, tied, device, dtype)
    tok = tokenizer(path) if tokenizer is not None else _tokenizer(path, trust_remote_code)
    stop = tuple(i for i in [tok.convert_tokens_to_ids("<|eot_id|>")] if isinstance(i, int) and i != tok.unk_token_id)
    return DiffusionModel(
        module=module,
        tokenizer=tok,
        name=name,
        eos_id=cfg.eos_token_id,
        pad_id=cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id,
        max_length=cfg.max_sequence_length,
        stop_ids=stop,
        decode_defaults=_exact_cache_default(module, defaults),
        mask_id=cfg.mask_token_id,
    )


def load_llada2(path, config, defaults, name, device, dtype, trust_remote_code) -> DiffusionModel:
    """fewstep's own LLaDA 2.x (MoE, block-causal attention); the mask id from the tokenizer's mask
    token, else ``mask_token_id`` in config.json, else the token ``<|mask|>``."""
    tied = "lm_head.weight" if config.get("tie_word_embeddings") else None
    cfg, module = _native(path, config, tied, device, dtype)
    tok = _tokenizer(path, trust_remote_code, fallback=_fallback(config))
    mask_id = tok.mask_token_id if tok.mask_token_id is not None else config.get("mask_token_id")
    if mask_id is None and "<|mask|>" in tok.get_vocab():  # LLaDA 2's mask token (156895 in its vocabulary)
        mask_id = tok.convert_tokens_to_ids("<|mask|>")
    if mask_id is None:
        raise ModelLoadError(f"{path}: no mask token (neither the tokenizer's mask_token nor mask_token_id)")
    return DiffusionModel(module=module, tokenizer=tok, name=name, eos_id=cfg.eos_token_id,
                          pad_id=cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id,
                          max_length=cfg.max_position_embeddings,
                          decode_defaults=_exact_cache_default(module, defaults), mask_id=int(mask_id))


def load_dream(path, config, defaults, name, device, dtype, trust_remote_code) -> DiffusionModel:
    """fewstep's own Dream (Qwen2 layers, bidirectional attention). Dream predicts position i from
    the logits at i - 1, so the adapter realigns them (``shifted_logits``). Its tokenizer is remote
    code: without the opt-in its files are read by transformers' Qwen2 tokenizer."""
    tied = "lm_head.weight" if config.get("tie_word_embeddings") else None
    cfg, module = _native(path, config, tied, device, dtype)
    tok = _tokenizer(path, trust_remote_code, fallback=_fallback(config))
    mask = tok.mask_token_id if tok.mask_token_id is not None else cfg.mask_token_id
    if mask is None:
        raise ModelLoadError(f"{path}: neither the tokenizer nor config.json names a mask token")
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.eos_token_id
    pad = next(i for i in (tok.pad_token_id, cfg.pad_token_id, eos) if i is not None)
    stop = tuple(i for i in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(i, int) and i != tok.unk_token_id
                 and i != eos)
    return DiffusionModel(
        module=module,
        tokenizer=tok,
        name=name,
        eos_id=eos,
        pad_id=pad,
        max_length=cfg.max_position_embeddings,
        stop_ids=stop,
        decode_defaults=defaults,
        mask_id=mask,
        shifted_logits=True,
    )


def _load_causal(path, config, defaults, name, device, dtype, trust_remote_code) -> CausalModel:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            module = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype or "auto", trust_remote_code=trust_remote_code
            )
    except Exception as e:  # unknown architecture, corrupt or missing weights
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelLoadError(f"cannot load {path} as a causal LM: {first_line}") from None
    module = module.to(device).eval()
    tok = _tokenizer(path, trust_remote_code)
    eos = tok.eos_token_id if tok.eos_token_id is not None else config.get("eos_token_id")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return CausalModel(
        module=module,
        tokenizer=tok,
        name=name,
        eos_id=eos,
        pad_id=pad,
        max_length=int(config.get("max_position_embeddings", 2048)),
        decode_defaults=defaults,
    )
