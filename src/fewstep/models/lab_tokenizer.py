"""The tokenizer of a bundled lab model without transformers: the ``tokenizers`` library and jinja2.

``transformers`` takes over half a second to import; the bundled models' tokenizers are plain
``tokenizer.json`` files (``TokenizersBackend``) with a jinja chat template, so ``fewstep generate``
loads them directly. :class:`LabTokenizer` has the part of the transformers tokenizer interface that
fewstep's adapters use (``encode``, ``decode``, ``apply_chat_template``, ``convert_tokens_to_ids``, the
special tokens and their ids), with the same results: the template is rendered as transformers renders
it (a sandboxed jinja2 environment with ``trim_blocks`` and ``lstrip_blocks``, the special tokens as
variables) and encoded without special tokens; ``tests/test_lab_tokenizer.py`` compares the two.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from fewstep.errors import ModelLoadError

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class LabTokenizer:
    """A ``tokenizer.json`` tokenizer with its ``tokenizer_config.json`` specials and chat template."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self.backend = Tokenizer.from_file(str(path / "tokenizer.json"))
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
            template = path / "chat_template.jinja"
            self.chat_template: str | None = (
                template.read_text(encoding="utf-8") if template.is_file() else config.get("chat_template")
            )
        except Exception as e:  # OSError, JSON errors, and tokenizers' own Exception type
            raise ModelLoadError(f"cannot load the tokenizer of {path}: {e}") from None
        self.special_tokens_map = {k: config[k] for k in SPECIAL if isinstance(config.get(k), str)}
        for key in SPECIAL:
            token = self.special_tokens_map.get(key)
            setattr(self, key, token)
            setattr(self, key + "_id", self.backend.token_to_id(token) if token is not None else None)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The token's id, or the unknown token's id when the vocabulary has no such token."""
        found = self.backend.token_to_id(token)
        return found if found is not None else getattr(self, "unk_token_id", None)

    def apply_chat_template(
        self, conversation: list[dict[str, str]], add_generation_prompt: bool = False, tokenize: bool = True,
        return_dict: bool = False, **kwargs: Any,
    ) -> str | list[int]:
        """The conversation rendered with the chat template (as transformers renders it); its token ids
        (encoded without special tokens) when ``tokenize``."""
        if not self.chat_template:
            raise ModelLoadError("this tokenizer has no chat template")
        if return_dict:
            raise ValueError("return_dict is not supported by the lab tokenizer")
        text = _template(self.chat_template).render(
            messages=conversation, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


# {{ name }} and {{ messages[-1]['content'] }}
_PLAIN = re.compile(r"""\{\{\s*(?:(\w+)|messages\[-1\]\[(['"])content\2\])\s*\}\}""")


class _Substitution:
    """A template made only of text and ``{{ name }}`` / ``{{ messages[-1]['content'] }}`` (the lab
    models' templates), rendered as jinja2 renders it without importing jinja2 (a tenth of a second)."""

    def __init__(self, source: str) -> None:
        self.parts = _PLAIN.split(source.removesuffix("\n"))  # jinja drops one trailing newline

    @staticmethod
    def applies(source: str) -> bool:
        """Whether the template has nothing but text and such substitutions."""
        return not any(c in _PLAIN.sub("", source) for c in "{}%#")

    def render(self, messages: list[dict[str, Any]], **variables: Any) -> str:
        parts, out = self.parts, []
        for i in range(0, len(parts), 3):  # text, then the variable's name (None: the last message's content), quote
            out.append(parts[i])
            if i + 1 < len(parts):
                name = parts[i + 1]
                out.append(str(variables.get(name, "") if name else messages[-1]["content"]))  # undefined: ""
        return "".join(out)


@functools.lru_cache(maxsize=4)
def _template(source: str) -> Any:
    """The compiled template: plain substitution where that is all the template does, else jinja2 in
    the environment transformers compiles chat templates in."""
    if _Substitution.applies(source):
        return _Substitution(source)
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
