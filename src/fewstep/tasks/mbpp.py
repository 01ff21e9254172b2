"""MBPP: short Python programming problems; pass@1 by running the problem's asserts.

Data: ``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code`` (mbpp.jsonl). The test split is
task_id 11-510; prompts are 3-shot with the customary task_ids 2, 3 and 4: the problem, "Your code
should pass these tests:", the asserts, then the code between ``[BEGIN]`` and ``[DONE]``. The program is
read from the output (fenced block, ``[BEGIN]...[DONE]``, or the raw text) and run in the sandbox with
the setup code and the asserts.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

from fewstep.sandbox.jail import run_tests
from fewstep.tasks.base import Example, Score
from fewstep.tasks.extract import extract_code, load_rows
from fewstep.tasks.jsonl import NULL, NUMBER, TEXT, TEXT_LIST

DATA_FILE = "mbpp.jsonl"
TEST_IDS = range(11, 511)
FIELDS = ("task_id", "text", "code", "test_list")
KINDS: dict[str, str | tuple[str, ...]] = {"task_id": (NUMBER, TEXT), "text": TEXT, "code": TEXT,
                                           "test_list": TEXT_LIST, "test_setup_code": (TEXT, NULL)}

# Rows 2, 3 and 4 of mbpp.jsonl (the customary few-shot problems), line endings normalised.
SHOTS: tuple[dict[str, Any], ...] = (
    {
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
        "  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    },
    {
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    },
    {
        "text": "Write a function to find the largest integers from a given list of numbers "
        "using heap queue algorithm.",
        "code": "import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, nums)\n"
        "  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
    },
)


def normalize_newlines(code: str) -> str:
    """MBPP code uses Windows line endings; the programs are run and shown with ``\\n``."""
    return code.replace("\r\n", "\n").replace("\r", "\n")


def task_text(row: dict[str, Any]) -> str:
    """A problem as the prompt states it: the task, then the asserts its code must pass."""
    tests = "\n".join(row["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {row['text']} "
        f"Your code should pass these tests:\n\n{tests}\n"
    )


def solution_text(code: str) -> str:
    """Code written the way the prompt's examples (and the extraction) expect it."""
    return f"[BEGIN]\n{normalize_newlines(code).rstrip()}\n[DONE]"


def format_prompt(row: dict[str, Any]) -> str:
    """The 3-shot prompt: the example problems with their solutions, then the problem to solve."""
    shots = "".join(f"{task_text(shot)}{solution_text(shot['code'])}\n\n" for shot in SHOTS)
    return shots + task_text(row)


def checks_for(row: dict[str, Any]) -> str:
    """The setup code and the asserts that decide a problem."""
    setup = normalize_newlines(row.get("test_setup_code") or "")
    return "\n".join([setup, *row["test_list"]])


def builtins_defined(code: str) -> tuple[str, ...]:
    """Names of built-ins that the code defines as top-level functions (the tests may call such a
    function of the program, e.g. a problem's ``sum``; any other built-in stays the real one)."""
    return tuple(n for n in re.findall(r"^def\s+(\w+)", code, re.MULTILINE) if hasattr(builtins, n))


def split_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The test split (task_id 11-510) when the rows contain it, else all rows."""
    split = [r for r in rows if r["task_id"] in TEST_IDS]
    return split or rows


class MBPPTask:
    name = "mbpp"
    default_gen_length = 512

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def examples(self, data: str | None = None) -> list[Example]:
        """The test split of ``--data`` or the local mbpp.jsonl, as 3-shot prompts."""
        rows = split_rows(load_rows(data, DATA_FILE, required=FIELDS, kinds=KINDS))
        return [
            Example(
                id=str(r["task_id"]),
                prompt=format_prompt(r),
                reference={"tests": checks_for(r)},
                gold_output=solution_text(r["code"]),
            )
            for r in rows
        ]

    def score(self, example: Example, output: str) -> Score:
        """pass@1: the extracted code passes the problem's asserts in the sandbox."""
        program = extract_code(output)
        shadowing = builtins_defined(extract_code(example.gold_output))
        result = run_tests(program, example.reference["tests"], timeout_s=self.timeout_s, shadowing=shadowing)
        return Score(result.passed, program, result.summary())
