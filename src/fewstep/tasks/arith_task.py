"""``arith`` behind the task interface: the fixed test set, exact match on ``#### N``."""

from __future__ import annotations

from fewstep.tasks import arith
from fewstep.tasks.base import Example, Score


class ArithTask:
    name = "arith"
    default_gen_length = 24

    def examples(self, data: str | None = None) -> list[Example]:
        if data is not None:
            from fewstep.tasks.jsonl import read_jsonl

            rows = read_jsonl(data, required=("question", "answer"))
            return [
                Example(str(i), r["question"], arith.extract_answer(r["answer"]), r["answer"])
                for i, r in enumerate(rows)
            ]
        return [
            Example(str(i), p.question, p.answer, p.solution, {"steps": p.steps})
            for i, p in enumerate(arith.test_set())
        ]

    def score(self, example: Example, output: str) -> Score:
        got = arith.extract_answer(output)
        return Score(got is not None and got == example.reference, got)
