"""Tokenizers of the lab models, built with the ``tokenizers`` library and saved as tokenizer.json.

- word level (tiny-dlm): one token per whitespace-separated word, so every number 0..99 is one token;
- character level (tiny-ar): one token per character, deliberately different from tiny-dlm's.

Both carry a chat template that turns a question into the prompt the lab models were trained on.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = {"pad": "<pad>", "mask": "<mask>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
LAB_CHAT_TEMPLATE = "{{ bos_token }}Q: {{ messages[-1]['content'] }} A:"


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIALS["pad"],
        mask_token=SPECIALS["mask"],
        eos_token=SPECIALS["eos"],
        bos_token=SPECIALS["bos"],
        unk_token=SPECIALS["unk"],
    )
    fast.chat_template = LAB_CHAT_TEMPLATE
    return fast


def word_level(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS.values())}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS.values()))
    return _wrap(tok)


def char_level(chars: str) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS.values())}
    for c in sorted(set(chars)):
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges=[], unk_token=SPECIALS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS.values()))
    return _wrap(tok)
