"""transformers' Auto classes for the block diffusion and MoE architectures (SDAR, Fast-dLLM v2,
LLaDA-MoE): thin ``PreTrainedModel`` wrappers over fewstep's modules (:class:`fewstep.models.hf._Wrapper`),
registered by :func:`fewstep.models.hf.register_auto_classes` through each registry entry's
``hf_model``. Logits are fewstep's module's (Fast-dLLM v2's unshifted, as its own code computes them).

Auto classes key on ``model_type``: a LLaDA-MoE config.json saying ``model_type: lladamoe`` opens
here; the published one says ``llada`` and goes to the LLaDA wrapper (``fewstep.load_model`` tells
them apart by ``architectures``).
"""

from __future__ import annotations

from fewstep.models import fast_dllm_v2, llada_moe, qwen_block, sdar
from fewstep.models.hf import UntiedConfig, _Wrapper


class SDARHFConfig(UntiedConfig):
    model_type = "sdar"


class FastDLLMV2HFConfig(UntiedConfig):
    model_type = "Fast_dLLM_Qwen"


class LLaDAMoEHFConfig(UntiedConfig):
    model_type = "lladamoe"


class SDARForMaskedLM(_Wrapper):
    """fewstep's SDAR (:class:`~fewstep.models.qwen_block.QwenBlockModel`) as a transformers model."""

    config_class = SDARHFConfig
    fewstep_model = qwen_block.QwenBlockModel
    fewstep_config = sdar.SDARConfig


class FastDLLMV2ForMaskedLM(_Wrapper):
    """fewstep's Fast-dLLM v2 (:class:`~fewstep.models.qwen_block.QwenBlockModel`) as a transformers model."""

    config_class = FastDLLMV2HFConfig
    fewstep_model = qwen_block.QwenBlockModel
    fewstep_config = fast_dllm_v2.FastDLLMV2Config


class LLaDAMoEForMaskedLM(_Wrapper):
    """fewstep's LLaDA-MoE (:class:`~fewstep.models.llada_moe.LLaDAMoEModel`) as a transformers model."""

    config_class = LLaDAMoEHFConfig
    fewstep_model = llada_moe.LLaDAMoEModel
    fewstep_config = llada_moe.LLaDAMoEConfig
