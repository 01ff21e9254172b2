"""Fast-dLLM v2 (NVlabs, checkpoints ``Efficient-Large-Model/Fast_dLLM_v2_1.5B`` / ``_7B``): Qwen2.5
decoder layers fine-tuned into a block diffusion model, loaded natively (:mod:`fewstep.models.qwen_block`).

config.json (``model_type: Fast_dLLM_Qwen``, ``architectures: ["Fast_dLLM_QwenForCausalLM"]``): the
Qwen2 fields ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``rms_norm_eps``, ``rope_theta``, ``hidden_act``,
``tie_word_embeddings``, ``max_position_embeddings``, ``layer_types`` (every layer
``full_attention``), and ``bd_size``, the attention block (32 when absent, the published value).
Values that change the computation and are not reproduced (``rope_scaling``, a sliding window) are
refused at load.

The layers are Qwen2's: q, k and v projections with a bias, o without, no query/key norm, rotary on
the whole head. Attention is block-causal in blocks of ``bd_size`` from the sequence start (the
published ``eval_mask``), and the logits are *shifted* as in an autoregressive model: the output at
position i - 1 predicts position i (the reference's decoding realigns them; so does fewstep's adapter).

The authors decode (``generate`` / ``batch_sample``): blocks of ``bd_size`` = 32 split into sub-blocks
of 8 decoded left to right; at each step every masked position of the sub-block whose probability is
above ``threshold`` (0.9 in their evaluation) is committed, and always the most confident one; the
finished blocks come from the key/value cache. fewstep's ``block_threshold`` with ``threshold=0.9``,
``block_length=8`` and ``cache=dual`` (exact under block-causal attention) is that rule; these are this
family's decode defaults. One difference remains: the reference fills the first position of each new
32-block with the argmax of the finished block's last output before decoding the block, where fewstep
commits that position by the same confidence rule as the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fewstep.models.configs import check_qwen2_layout, config_dict
from fewstep.models.qwen_block import QwenBlockConfig, load_directory, positive_block

AUTHORS = {"block_length": 8, "threshold": 0.9, "minimal_topk": 1, "cache": "dual"}
MASK_TOKENS = ("|<MASK>|",)


@dataclass(frozen=True)
class FastDLLMV2Config(QwenBlockConfig):
    bd_size: int = 32

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False

    @property
    def qk_norm(self) -> bool:
        return False

    @property
    def attention_block_length(self) -> int:
        return self.bd_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastDLLMV2Config:
        """A published Fast-dLLM v2 config.json (:class:`~fewstep.errors.ModelLoadError` naming a
        field whose value is not implemented)."""
        kw = cls.common_fields(d)
        positive_block("bd_size", kw.get("bd_size", 32))
        check_qwen2_layout(d, "Qwen2")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="Fast_dLLM_Qwen", architectures=["Fast_dLLM_QwenForCausalLM"],
                           rope_scaling=None, use_sliding_window=False,
                           layer_types=["full_attention"] * self.num_hidden_layers)


def load_fast_dllm_v2(path, config, defaults, name, device, dtype, trust_remote_code):
    """fewstep's own Fast-dLLM v2 (shifted logits); decode defaults: the authors' settings
    (:data:`AUTHORS`) under the directory's."""
    return load_directory(path, config, defaults, name, device, dtype, trust_remote_code, MASK_TOKENS,
                          shifted=True, authors=AUTHORS)
