"""fewstep's own architectures (and DiffusionGemma, which transformers implements and fewstep decodes in
its own loop), one entry each: the registry that loading, ``fewstep list models`` and transformers'
Auto classes read.

An entry names what a config.json calls the architecture (``model_type``, matched without regard to
case, and the ``architectures`` fewstep writes), its config and module classes, the builder that
turns a directory into a :class:`~fewstep.models.adapter.DiffusionModel`, its attention, the
tokenizer class that reads its tokenizer files when they name remote code, and its transformers
wrapper (for :func:`fewstep.models.hf.register_auto_classes`; None: not opened by the Auto classes).

Classes and functions are named ``"module:attribute"`` and imported on use (:func:`target`), so
importing this module loads neither torch nor transformers. Adding an architecture is its module,
its builder and one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

BIDIRECTIONAL = "bidirectional"
BLOCK_CAUSAL = "block-causal"
CONFIGURED = "bidirectional or block-causal (attention_block_length)"
ENCODER_DECODER = "causal encoder over the prefix, bidirectional decoder over the canvas"


@dataclass(frozen=True)
class Architecture:
    name: str  # how people call it
    model_type: str  # config.json's model_type, as fewstep writes it
    architectures: tuple[str, ...]  # config.json's architectures, as fewstep writes them
    config: str  # the config class ("module:Class"): from_dict(config.json), to_dict()
    module: str  # the torch module class, built from the config
    builder: str  # (path, config, defaults, name, device, dtype, trust_remote_code) -> DiffusionModel
    attention: str  # BIDIRECTIONAL, BLOCK_CAUSAL or CONFIGURED
    tokenizer_fallback: str | None = None  # transformers' class for tokenizer files that are remote code
    hf_model: str | None = None  # the transformers wrapper (its config_class is the Auto classes' key)
    implementation: str = "fewstep"  # whose modelling code runs: fewstep's, or transformers' own classes

    @property
    def block_causal(self) -> bool:
        """Always block-causal (CONFIGURED architectures are so only when their config says)."""
        return self.attention == BLOCK_CAUSAL


# Names that load a built-in model rather than a directory (``--model gold``).
BUILT_IN = {"gold": "fewstep.evaluation.gold:GoldModel"}

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="LLaDA", model_type="llada", architectures=("LLaDAModelLM",),
        config="fewstep.models.llada:LLaDAConfig", module="fewstep.models.llada:LLaDAModel",
        builder="fewstep.models.loading:load_llada", attention=CONFIGURED,
        hf_model="fewstep.models.hf:LLaDAForMaskedLM",
    ),
    Architecture(
        name="Dream", model_type="Dream", architectures=("DreamModel",),
        config="fewstep.models.dream:DreamConfig", module="fewstep.models.dream:DreamModel",
        builder="fewstep.models.loading:load_dream", attention=BIDIRECTIONAL,
        tokenizer_fallback="Qwen2Tokenizer", hf_model="fewstep.models.hf:DreamForMaskedLM",
    ),
    Architecture(
        name="LLaDA2", model_type="llada2_moe", architectures=("LLaDA2MoeModelLM",),
        config="fewstep.models.llada2:LLaDA2Config", module="fewstep.models.llada2:LLaDA2Model",
        builder="fewstep.models.loading:load_llada2", attention=BLOCK_CAUSAL,
        tokenizer_fallback="PreTrainedTokenizerFast",
    ),
    Architecture(
        name="LLaDA-MoE", model_type="lladamoe", architectures=("LLaDAMoEModelLM",),
        config="fewstep.models.llada_moe:LLaDAMoEConfig", module="fewstep.models.llada_moe:LLaDAMoEModel",
        builder="fewstep.models.llada_moe:load_llada_moe", attention=BIDIRECTIONAL,
        tokenizer_fallback="PreTrainedTokenizerFast", hf_model="fewstep.models.hf_block:LLaDAMoEForMaskedLM",
    ),
    Architecture(
        name="SDAR", model_type="sdar", architectures=("SDARForCausalLM",),
        config="fewstep.models.sdar:SDARConfig", module="fewstep.models.qwen_block:QwenBlockModel",
        builder="fewstep.models.sdar:load_sdar", attention=BLOCK_CAUSAL, tokenizer_fallback="Qwen2Tokenizer",
        hf_model="fewstep.models.hf_block:SDARForMaskedLM",
    ),
    Architecture(
        name="Fast-dLLM v2", model_type="Fast_dLLM_Qwen", architectures=("Fast_dLLM_QwenForCausalLM",),
        config="fewstep.models.fast_dllm_v2:FastDLLMV2Config", module="fewstep.models.qwen_block:QwenBlockModel",
        builder="fewstep.models.fast_dllm_v2:load_fast_dllm_v2", attention=BLOCK_CAUSAL,
        tokenizer_fallback="Qwen2Tokenizer", hf_model="fewstep.models.hf_block:FastDLLMV2ForMaskedLM",
    ),
    Architecture(  # transformers' own implementation (no remote code), a uniform-state model
        name="DiffusionGemma", model_type="diffusion_gemma", architectures=("DiffusionGemmaForBlockDiffusion",),
        config="transformers:DiffusionGemmaConfig", module="transformers:DiffusionGemmaForBlockDiffusion",
        builder="fewstep.models.diffusion_gemma:load_diffusion_gemma", attention=ENCODER_DECODER,
        implementation="transformers",
    ),
)

_BY_TYPE = {a.model_type.lower(): a for a in ARCHITECTURES}


def find(model_type: Any) -> Architecture | None:
    """The architecture whose ``model_type`` this is (any case), or None."""
    return _BY_TYPE.get(str(model_type).lower())


_BY_ARCHITECTURE = {name: a for a in ARCHITECTURES for name in a.architectures}


def for_config(config: dict[str, Any]) -> Architecture | None:
    """The architecture of a config.json: the first of its ``architectures`` fewstep implements, else
    its ``model_type`` (LLaDA-MoE's published config says ``model_type: llada`` beside
    ``architectures: ["LLaDAMoEModelLM"]``: the architecture decides)."""
    names = config.get("architectures")
    for name in names if isinstance(names, list) else []:
        if isinstance(name, str) and name in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[name]
    return find(config.get("model_type"))


def native(config: dict[str, Any]) -> bool:
    """Whether fewstep implements the architecture of a config.json."""
    return for_config(config) is not None


def model_types() -> tuple[str, ...]:
    """The ``model_type`` of every architecture fewstep implements, as fewstep writes them."""
    return tuple(a.model_type for a in ARCHITECTURES)


def target(name: str) -> Any:
    """The class or function an entry names as ``"module:attribute"``."""
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)
