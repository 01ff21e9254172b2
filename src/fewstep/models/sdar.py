"""SDAR (JetAstra's "Synergy of Diffusion and AutoRegression", checkpoints ``JetLM/SDAR-*-Chat``):
Qwen3 decoder layers trained as a block diffusion model, loaded natively (:mod:`fewstep.models.qwen_block`).

config.json (``model_type: sdar``, ``architectures: ["SDARForCausalLM"]``): the Qwen3 fields
``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``rms_norm_eps``, ``rope_theta``, ``hidden_act``,
``attention_bias`` (one switch for the q, k, v and o biases), ``tie_word_embeddings``,
``max_position_embeddings``, and SDAR's ``block_size`` (the attention block; 4 when absent, the size
the authors' ``generate.py`` and SGLang use) and ``mask_token_id``. Values that change the
computation and are not reproduced (``rope_scaling``, a sliding window) are refused at load;
training-only fields (``attention_dropout``, ``fuse_cross_entropy``, ``initializer_range``) do not
change a forward.

SDAR's layers are Qwen3's: RMSNorm over the head dimension on queries and keys (``self_attn.q_norm``,
``self_attn.k_norm``) before rotary, attention block-causal in blocks of ``block_size`` from the
sequence start, ``logits[:, i]`` predicting position i (no shift).

The authors decode (``generate.py``): blocks of 4, 4 denoising steps per block, low-confidence
dynamic remasking with threshold 0.85 (commit every masked position above it, at least one per
step), i.e. fewstep's ``block_threshold`` with ``threshold=0.85``, ``block_length=4``; these are
this family's decode defaults, and the finished blocks come from the key/value cache (``cache=dual``,
exact under block-causal attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fewstep.models.configs import config_dict
from fewstep.models.qwen_block import QwenBlockConfig, load_directory, positive_block

AUTHORS = {"block_length": 4, "threshold": 0.85, "minimal_topk": 1, "cache": "dual"}
MASK_TOKENS = ("<|MASK|>",)


@dataclass(frozen=True)
class SDARConfig(QwenBlockConfig):
    attention_bias: bool = False
    block_size: int = 4

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        return True

    @property
    def attention_block_length(self) -> int:
        return self.block_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SDARConfig:
        """A published SDAR config.json (:class:`~fewstep.errors.ModelLoadError` naming a field whose
        value is not implemented)."""
        kw = cls.common_fields(d)
        positive_block("block_size", kw.get("block_size", 4))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, model_type="sdar", architectures=["SDARForCausalLM"], rope_scaling=None,
                           use_sliding_window=False)


def load_sdar(path, config, defaults, name, device, dtype, trust_remote_code):
    """fewstep's own SDAR; decode defaults: the authors' settings (:data:`AUTHORS`) under the directory's."""
    return load_directory(path, config, defaults, name, device, dtype, trust_remote_code, MASK_TOKENS,
                          shifted=False, authors=AUTHORS)
