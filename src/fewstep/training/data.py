"""Turning lab-task problems into training tensors (left-padded prompts, attention masks)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fewstep.tasks import arith


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] prompt (left-padded) then answer
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens
    answer_mask: torch.Tensor  # [B, T] True on the answer positions (the loss region)


class QA(Protocol):
    """A training example: the question and its full solution text (arith.Problem is one)."""

    @property
    def question(self) -> str: ...

    @property
    def solution(self) -> str: ...


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The prompt exactly as inference builds it: the tokenizer's chat template."""
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def problems_for_step(seed: int, step: int, n: int) -> list[arith.Problem]:
    """The training problems of one optimiser step: a pure function of (seed, step), so a resumed
    run sees exactly the data an uninterrupted one would have."""
    return list(itertools.islice(arith.train_problems(seed * 1_000_003 + step), n))


def encode(tokenizer, problems: Sequence[QA], gen_length: int | None) -> Batch:
    """Prompt + answer per row. With ``gen_length`` the answer is padded with EOS to that length
    (the diffusion layout); without it, the answer is followed by one EOS (the causal layout)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, ans_lens = [], []
    for p in problems:
        a = tokenizer.encode(" " + p.solution if gen_length is None else p.solution, add_special_tokens=False)
        if gen_length is None:
            a = a + [eos]
        else:
            if len(a) >= gen_length:
                raise ValueError(f"answer of {len(a)} tokens does not fit gen_length={gen_length}")
            a = a + [eos] * (gen_length - len(a))
        rows.append(prompt_ids(tokenizer, p.question) + a)
        ans_lens.append(len(a))
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    att = torch.zeros((len(rows), t), dtype=torch.long)
    ans = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, (r, n_ans) in enumerate(zip(rows, ans_lens)):
        ids[i, t - len(r):] = torch.tensor(r)
        att[i, t - len(r):] = 1
        ans[i, t - n_ans:] = True
    return Batch(ids, att, ans)
