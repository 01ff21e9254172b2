"""The ``trajectory`` objective of ``fewstep distill``: learn to jump from any state of the teacher's
own decoding trajectory to its final answer (the recipe of dParallel, d3LLM and CDLM, and of
CD4LM's consistency view), with dParallel's certainty forcing.

- **Rollouts**: the frozen teacher decodes the step's prompts through the project's decode loop
  (llada, one token per step unless ``traj_steps`` says otherwise), recording its final answer and
  the step at which it committed each position; deterministic (greedy), so a resumed or
  data-parallel run sees the same rollouts. They are made at every step, or read from a directory
  that ``fewstep rollouts`` wrote beforehand with any strategy (``rollouts``:
  :mod:`fewstep.training.rollouts`). Their forwards and seconds are logged with every step
  (``rollout_nfe``, ``rollout_s``) either way: they are part of the training cost.
- **States**: per example a step k ~ U{0, ..., S - 1} of its S-step trajectory; the positions the
  teacher committed at step k or later are masked (the canvas the teacher saw before its step k).
- **Loss**: cross-entropy of the student at the masked positions against the teacher's final
  answer, over the step's masked tokens; with ``traj_verified`` only rollouts whose answer is right
  (``#### N`` against the reference) count. **Certainty forcing** (``certainty_weight`` > 0): plus
  that weight times the student's entropy at the masked positions it already predicts right, which
  sharpens the confident predictions a few-step decoder commits in parallel.

Shapes: B rows, G answer positions, V vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Rollouts:
    tokens: torch.Tensor  # [B, G] the teacher's final answer
    committed_at: torch.Tensor  # [B, G] the step of its trajectory at which each position was committed
    steps: int  # S, the trajectory's length
    right: torch.Tensor  # [B] bool: the answer matches the reference
    nfe: int  # teacher forwards, all rows
    seconds: float


@torch.no_grad()
def rollouts(teacher: Any, problems: list[Any], decode: Any) -> Rollouts:
    """The teacher's greedy trajectories of ``problems`` under the decode configuration ``decode``
    (:func:`fewstep.training.rollouts.llada_config` for the objective's own)."""
    from fewstep.decoding.loop import decode as run
    from fewstep.tasks.arith import extract_answer

    t0 = time.perf_counter()
    *_, last = run(teacher, [teacher.encode_prompt(p.question) for p in problems], decode, snapshots=False)
    seconds = time.perf_counter() - t0
    texts = [teacher.decode(row) for row in last.canvas.tolist()]
    right = torch.tensor([extract_answer(t) is not None and extract_answer(t) == extract_answer(p.solution)
                          for t, p in zip(texts, problems)])
    steps = int(last.committed_at.max()) + 1
    return Rollouts(last.canvas, last.committed_at, steps, right, int(last.nfe.sum()), seconds)


def states(r: Rollouts, generator: torch.Generator) -> torch.Tensor:
    """[B, G] the masked positions of each example's state: committed at step k or later, k uniform
    over the steps of its own trajectory (all S of them under llada; fewer where an adaptive
    strategy finished a row early)."""
    length = r.committed_at.amax(1) + 1  # [B] steps of each row's trajectory
    k = torch.randint(r.steps, (r.tokens.shape[0],), generator=generator)  # [B]
    short = length < r.steps
    if short.any():
        k = torch.where(short, (torch.rand(k.shape, generator=generator) * length).long(), k)
    return r.committed_at >= k[:, None]


def token_terms(logits: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """logits [b, G, V], target [b, G], masked [b, G] -> (ce [M], entropy [M]) at the masked positions,
    the entropy zero where the student's argmax is not the target (certainty forcing's support)."""
    s = logits[masked].float()  # [M, V]
    y = target[masked]  # [M]
    ce = F.cross_entropy(s, y, reduction="none")
    logp = F.log_softmax(s, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)  # [M]
    return ce, torch.where(s.argmax(-1) == y, entropy, torch.zeros_like(entropy))
