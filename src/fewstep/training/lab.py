"""The lab models: fresh architectures and tokenizers for the ``arith`` task, saved in Hugging
Face layout (config.json, model.safetensors, tokenizer.json) so that ``fewstep.load_model`` reads
them like real checkpoints (the loader never needs this module)."""

from __future__ import annotations

import functools
import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerFast

from fewstep.errors import ConfigError
from fewstep.models.llada import LLaDAConfig, LLaDAModel
from fewstep.tasks import arith
from fewstep.training import tokenizers

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

CHARS = string.ascii_letters + string.digits + " .?+-=/#:x"
MAX_LEN = 512  # positions of a new lab model: prompt and answer together


@functools.cache
def task_extent(kind: str) -> tuple[int, int]:
    """The longest prompt (chat template included) and the longest answer (without EOS) of the lab
    task's test and validation problems, in tokens of a new ``kind`` model's tokenizer (the training
    problems come from the same generator)."""
    from fewstep.training.data import prompt_ids

    tok = tokenizers.word_level(arith.vocabulary()) if kind == "dlm" else tokenizers.char_level(CHARS)
    problems = arith.test_set() + arith.val_set()
    prompt = max(len(prompt_ids(tok, p.question)) for p in problems)
    lead = "" if kind == "dlm" else " "  # the causal layout puts a space before the answer
    answer = max(len(tok.encode(lead + p.solution, add_special_tokens=False)) for p in problems)
    return prompt, answer


def check_fits(kind: str, gen_length: int, max_len: int = MAX_LEN) -> None:
    """Refuse, before any training, a run whose examples a new ``kind`` model cannot hold: a
    diffusion answer region (``gen_length``) too short for the task's answers plus one EOS, or too
    long for the context after the longest prompt; a causal model's prompt and answer beyond it."""
    prompt, answer = task_extent(kind)
    if kind != "dlm":
        if prompt + answer + 1 > max_len:
            raise ConfigError(f"the lab task's longest prompt and answer ({prompt} + {answer} + EOS tokens) do not "
                              f"fit the model's context of {max_len} positions")
        return
    if gen_length <= answer:
        raise ConfigError(f"gen_length={gen_length} cannot hold the lab task's answers: the longest takes {answer} "
                          f"tokens and one EOS (use at least {answer + 1})")
    if prompt + gen_length > max_len:
        raise ConfigError(f"gen_length={gen_length} does not fit the model's context of {max_len} positions after "
                          f"the lab task's longest prompt ({prompt} tokens): use at most {max_len - prompt}")


def new_dlm(
    d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, max_len: int = MAX_LEN, attention_block_length: int = 0
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
    d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, max_len: int = MAX_LEN
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
