"""The task interface every benchmark implements, and the registry ``fewstep eval --task`` uses.

A task turns its data into :class:`Example` rows (the question the model sees, the reference it is
scored against, and the reference solution the built-in ``gold`` model answers with) and scores a
model's output text. Tasks are registered by name and imported lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from fewstep.errors import TaskError


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str  # the user message (chat templates and few-shot context are applied by the task)
    reference: Any  # what scoring compares against (a number, an answer string, test code)
    gold_output: str  # a reference solution in the form a model would write it
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: Any = None  # the answer read from the output, for the samples file
    detail: str = ""


class Task(Protocol):
    name: str
    default_gen_length: int

    def examples(self, data: str | None = None) -> list[Example]: ...

    def score(self, example: Example, output: str) -> Score: ...


# name -> "module:attribute"; modules are imported only when a task is asked for.
REGISTRY: dict[str, str] = {
    "arith": "fewstep.tasks.arith:ArithTask",
    "arith-val": "fewstep.tasks.arith:ArithValTask",
    "gsm8k": "fewstep.tasks.gsm8k:GSM8KTask",
    "math500": "fewstep.tasks.math500:Math500Task",
    "humaneval": "fewstep.tasks.humaneval:HumanEvalTask",
    "mbpp": "fewstep.tasks.mbpp:MBPPTask",
}


def get_task(name: str, **kwargs: Any) -> Task:
    if name not in REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(REGISTRY))}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)(**kwargs)
