"""MATH-500: competition maths problems, scored by mathematical equivalence of the final answer.

Data: ``problem``, ``solution`` (ending in ``\\boxed{answer}``), ``answer``, ``subject``, ``level``,
``unique_id``. The prediction is the last ``\\boxed{...}`` in the output (else what follows "The answer
is", else the final answer math-verify extracts); it is correct when it equals the reference after light
LaTeX normalisation, or when the ``math-verify`` library finds the two equivalent.
"""

from __future__ import annotations

import re

from fewstep.tasks.base import Example, Score
from fewstep.tasks.extract import answer_is, last_boxed, load_rows, math_verify_parse, math_verify_timeout
from fewstep.tasks.jsonl import NUMBER, TEXT

TEST_FILE = "math500_test.jsonl"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\s+")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?")


def normalize_answer(answer: str) -> str:
    """A LaTeX answer reduced for exact comparison: no spacing, sizing, ``\\text{}`` wrappers, degrees,
    ``$`` delimiters or trailing full stop; ``\\dfrac``/``\\tfrac`` as ``\\frac``."""
    text = answer.strip().strip("$")
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _TEXT.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = _SPACING.sub("", text)
    return text.rstrip(".")


def extract_prediction(output: str) -> str | None:
    """The answer in a model's output: the last ``\\boxed{...}``, else what follows "The answer is",
    else the final answer math-verify's own extraction finds (the last LaTeX or plain expression)."""
    boxed = last_boxed(output)
    if boxed is not None:
        return boxed
    stated = answer_is(output)
    if stated is not None:
        return stated
    parsed = math_verify_parse(output)
    return str(parsed[1]) if len(parsed) > 1 else None


def equivalent(reference: str, prediction: str) -> bool:
    """Whether two LaTeX answers agree: equal after normalisation, or equivalent for math-verify."""
    if normalize_answer(reference) == normalize_answer(prediction):
        return True
    from math_verify import verify

    gold = math_verify_parse(f"${reference}$", required=True)
    guess = math_verify_parse(f"${prediction}$", required=True)
    return bool(gold) and bool(guess) and verify(gold, guess, timeout_seconds=math_verify_timeout())


class Math500Task:
    name = "math500"
    default_gen_length = 512

    def examples(self, data: str | None = None) -> list[Example]:
        """The MATH-500 rows (``--data`` or the local math500_test.jsonl) as prompts with their answers."""
        rows = load_rows(data, TEST_FILE, required=("problem", "solution", "answer"),
                         kinds={"problem": TEXT, "solution": TEXT, "answer": (TEXT, NUMBER)})
        return [
            Example(
                id=str(r.get("unique_id", i)),
                prompt=f"{r['problem']}\n{INSTRUCTION}",
                reference=r["answer"],
                gold_output=r["solution"],
                meta={k: r[k] for k in ("subject", "level") if k in r},
            )
            for i, r in enumerate(rows)
        ]

    def score(self, example: Example, output: str) -> Score:
        """Correct when the extracted answer is equivalent to the reference."""
        prediction = extract_prediction(output)
        if not prediction:
            return Score(False, None, "no boxed answer found")
        return Score(equivalent(str(example.reference), prediction), prediction)
