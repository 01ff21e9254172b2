"""The built-in model ``gold``: it answers every problem with the task's reference solution.

``fewstep eval --task NAME --model gold`` sends each example's ``gold_output`` through the same
path as a real model's output (the samples file, answer extraction, code execution, scoring and
summary), so a task whose pipeline is right scores 100% with it. It costs no forward pass: NFE is 0,
and ``answer_tokens`` counts the whitespace-separated words of the solution (there is no
tokenizer), so tokens per forward reads 0.

It answers examples, not prompts: :meth:`GoldModel.answer` takes the task's examples. Anything that
tries to decode a prompt with it (``fewstep.generate``, ``fewstep generate``, ``fewstep bench``)
gets a :class:`~fewstep.errors.ConfigError` saying so. Decode settings are validated as usual and
then ignored; ``--device`` and ``--dtype`` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.decoding.result import GenerationResult
from fewstep.errors import ConfigError
from fewstep.tasks.base import Example

GOLD = "gold"
_NO_PROMPTS = (
    "the gold model answers task problems with their reference solutions and cannot decode a prompt; "
    "use it through `fewstep eval --task NAME --model gold` (or GoldModel.answer(examples))"
)


def gold_result(example: Example) -> GenerationResult:
    """The reference solution of one example as a generation: no forward pass, words as tokens."""
    text = example.gold_output
    return GenerationResult(token_ids=[], text=text, nfe=0, answer_tokens=len(text.split()))


@dataclass
class GoldModel:
    """A stand-in model whose answer to each example is that example's ``gold_output``."""

    name: str = GOLD
    kind: str = GOLD
    decode_defaults: dict[str, Any] = field(default_factory=dict)
    module: torch.nn.Module = field(default_factory=torch.nn.Module)  # no parameters: timers see no forwards
    stop_ids: tuple[int, ...] = ()

    def answer(self, examples: Sequence[Example]) -> list[GenerationResult]:
        """One result per example, in order."""
        return [gold_result(e) for e in examples]

    def encode_prompt(self, text: str) -> list[int]:
        """Refused: the gold model needs the examples, not their prompts."""
        raise ConfigError(_NO_PROMPTS)

    @property
    def mask_id(self) -> int:
        """Refused as well, so that decoding token-id prompts fails with the same message."""
        raise ConfigError(_NO_PROMPTS)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")
