"""transformers' Auto classes for fewstep's architectures: after :func:`register_auto_classes`,
``AutoConfig``, ``AutoModel`` / ``AutoModelForMaskedLM`` and ``AutoTokenizer`` open a directory of
each architecture in :mod:`fewstep.models.registry` that has a wrapper (LLaDA and Dream here; SDAR,
Fast-dLLM v2 and LLaDA-MoE in :mod:`fewstep.models.hf_block`; not LLaDA2): fewstep's lab models,
fewstep-saved models, the published checkpoints, with fewstep's own implementation, without remote
code. The models are thin ``PreTrainedModel`` wrappers over the same modules and parameter names,
so their logits are fewstep's (``logits[:, i]`` as the architecture computes them: Dream's are
unshifted, as in its own code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput

from fewstep.models import dream, llada
from fewstep.models.registry import ARCHITECTURES, target


class UntiedConfig(PretrainedConfig):
    """A config.json as transformers sees it (every field kept as an attribute), the output head untied
    unless it says ``tie_word_embeddings`` (LLaDA's own field is ``weight_tying``). A subclass per
    architecture names its ``model_type``."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class LLaDAHFConfig(UntiedConfig):
    """A LLaDA config.json as transformers sees it."""

    model_type = "llada"


class DreamHFConfig(UntiedConfig):
    model_type = "Dream"


@dataclass
class _View:
    """What the fewstep modules' forward reads from ``self``: their config and submodules."""

    config: Any
    model: nn.Module
    lm_head: nn.Module | None = None


class _Wrapper(PreTrainedModel):
    """A fewstep module class (``fewstep_model``, its config class ``fewstep_config``) as a
    ``PreTrainedModel``: the same submodules (so the same parameter names) and the same forward."""

    base_model_prefix = "model"
    fewstep_model: Any = None
    fewstep_config: Any = None

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.own_config = self.fewstep_config.from_dict(config.to_dict())  # with fewstep's contract checks
        for name, child in self.fewstep_model(self.own_config).named_children():
            self.add_module(name, child)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # weights come from the checkpoint
        pass

    def _view(self) -> _View:
        return _View(self.own_config, self.model, getattr(self, "lm_head", None))

    def get_input_embeddings(self) -> nn.Module:
        return self.fewstep_model.embed_tokens.fget(self._view())

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **kwargs: Any) -> MaskedLMOutput:
        out = self.fewstep_model.forward(self._view(), input_ids=input_ids, attention_mask=attention_mask,
                                         inputs_embeds=inputs_embeds, position_ids=position_ids)
        return MaskedLMOutput(logits=out.logits)


class LLaDAForMaskedLM(_Wrapper):
    """fewstep's LLaDA (:class:`~fewstep.models.llada.LLaDAModel`) as a transformers model."""

    config_class = LLaDAHFConfig
    fewstep_model = llada.LLaDAModel
    fewstep_config = llada.LLaDAConfig


class DreamForMaskedLM(_Wrapper):
    """fewstep's Dream (:class:`~fewstep.models.dream.DreamModel`) as a transformers model."""

    config_class = DreamHFConfig
    fewstep_model = dream.DreamModel
    fewstep_config = dream.DreamConfig


_REGISTERED = False


def register_auto_classes() -> None:
    """Register the transformers wrapper of each architecture in :mod:`fewstep.models.registry` that
    has one with transformers' Auto classes, and the tokenizer class of those whose tokenizer files
    name remote code (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import transformers

    for arch in ARCHITECTURES:
        if arch.hf_model is None:
            continue
        model_cls = target(arch.hf_model)
        config_cls = model_cls.config_class
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForMaskedLM.register(config_cls, model_cls, exist_ok=True)
        if arch.tokenizer_fallback is not None:
            tokenizer_cls = getattr(transformers, arch.tokenizer_fallback)
            AutoTokenizer.register(config_cls, tokenizer_class=tokenizer_cls, exist_ok=True)
    _REGISTERED = True
