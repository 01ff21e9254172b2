"""The data of ``fewstep distill``: training batches by step and a fixed validation set.

A JSONL file (``--data``) is split once into validation and training rows, and the training rows
are read in a fresh shuffled order every epoch; the built-in ``arith`` task draws new problems per
step. Either way the batch of step s is a pure function of (seed, s), so a resumed run trains on
exactly the batches an uninterrupted one would."""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Any

from fewstep.errors import ConfigError, TaskError
from fewstep.training import data
from fewstep.training.config import DistillConfig


@dataclass(frozen=True)
class Example:
    question: str
    solution: str


def load_jsonl(path: str) -> list[Example]:
    """Examples of a JSONL file with "question" and "answer" (or "solution") on every line."""
    from fewstep.tasks.jsonl import read_jsonl

    out = []
    for i, row in enumerate(read_jsonl(path, required=("question",)), 1):
        question, answer = row["question"], row.get("answer") or row.get("solution")
        if not isinstance(answer, str) or not answer.strip():
            raise TaskError(f"{path} row {i} has no answer: distillation needs a reference answer "
                            f"(an \"answer\" or \"solution\" field) on every row")
        out.append(Example(str(question), answer))
    if not out:
        raise TaskError(f"{path} holds no examples")
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


class Dataset:
    """Training batches by step (a pure function of seed and step) and a fixed validation set."""

    def __init__(self, cfg: DistillConfig):
        self.seed, self.batch_size = cfg.seed, cfg.batch_size
        self.rows: list[Example] | None = None
        if cfg.data:
            rows = load_jsonl(cfg.data)
            order = _epoch_order(len(rows), cfg.seed, -1)
            if len(rows) <= cfg.val_size:
                raise ConfigError(f"{cfg.data} has {len(rows)} examples, not more than val_size={cfg.val_size}")
            self.val: list[Any] = [rows[i] for i in order[: cfg.val_size]]
            self.rows = [rows[i] for i in order[cfg.val_size:]]
        elif cfg.task == "arith":
            from fewstep.tasks import arith

            # Negative seeds: never one of the training streams (seed * 1_000_003 + step >= 0).
            self.val = list(itertools.islice(arith.train_problems(-(cfg.seed + 1)), cfg.val_size))
        else:
            raise ConfigError(f"task {cfg.task!r} has no built-in training split: give --data FILE.jsonl "
                              f"(\"question\" and \"answer\" per line)")

    def batch(self, step: int) -> list[Any]:
        if self.rows is None:
            return list(data.problems_for_step(self.seed, step, self.batch_size))
        n = len(self.rows)
        start = step * self.batch_size
        return [self.rows[_epoch_order(n, self.seed, g // n)[g % n]] for g in range(start, start + self.batch_size)]


def encode(tok, examples: list[Any], gen_length: int) -> data.Batch:
    try:
        return data.encode(tok, examples, gen_length)
    except ValueError as e:
        raise ConfigError(f"{e}: raise --gen-length") from None
