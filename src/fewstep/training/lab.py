"""The lab models: fresh architectures and tokenizers for the ``arith`` task, saved in Hugging
Face layout (config.json, model.safetensors, tokenizer.json) so that ``fewstep.load_model`` reads
them like real checkpoints (the loader never needs this module)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerFast

from fewstep.models.llada import LLaDAConfig, LLaDAModel
from fewstep.tasks import arith
from fewstep.training import tokenizers

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

CHARS = string.ascii_letters + string.digits + " .?+-=/#:x"


def new_dlm(
    d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, max_len: int = 512, attention_block_length: int = 0
) -> tuple[LLaDAModel, PreTrainedTokenizerFast]:
    """A freshly initialised LLaDA-architecture model over the arith word-level vocabulary
    (``attention_block_length`` > 0: block-causal attention, see LLaDAConfig)."""
    tok = tokenizers.word_level(arith.vocabulary())
    cfg = LLaDAConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        n_layers=n_layers,
        mlp_hidden_size=mlp_hidden,
        vocab_size=len(tok),
        embedding_size=len(tok),
        mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_sequence_length=max_len,
        attention_block_length=attention_block_length,
    )
    model = LLaDAModel(cfg)
    _init(model)
    return model, tok


def new_ar(
    d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, max_len: int = 512
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A freshly initialised transformers Llama causal LM over a character-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizers.char_level(CHARS)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=mlp_hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_len,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), tok


def _init(model: LLaDAModel) -> None:
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
            if name.endswith(("attn_out.weight", "ff_out.weight")) and "blocks" in name:
                p.data /= (2 * model.config.n_layers) ** 0.5


def save_dlm(model: LLaDAModel, tok: PreTrainedTokenizerFast, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    tok.save_pretrained(out)


def save_ar(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.padding_side = "left"  # batched generate() in transformers then answers as one prompt at a time
    model.save_pretrained(out)
    tok.save_pretrained(out)
