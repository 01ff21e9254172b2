"""Check the benchmark scorers on the real data: every reference solution must score correct, and a
deliberately wrong answer for every problem must score incorrect.

    python scripts/check_gold.py                      # all four tasks, every problem
    python scripts/check_gold.py --tasks mbpp --limit 20

Prints, per task, the accuracy of the gold solutions and of the wrong answers, and exits non-zero
unless they are 100% and 0%.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable

from fewstep.tasks.base import Example, Task, get_task
from fewstep.tasks.extract import format_number, parse_number

TASKS = ("gsm8k", "math500", "humaneval", "mbpp")


def wrong_gsm8k(example: Example) -> str:
    """The reference reasoning, but a final answer one too high."""
    value = parse_number(str(example.reference))
    assert value is not None
    return example.gold_output.rsplit("####", 1)[0] + f"#### {format_number(value + 1)}"


def wrong_math500(example: Example) -> str:
    """The reference answer plus one, boxed."""
    return f"So the answer is $\\boxed{{{example.reference} + 1}}$."


def wrong_humaneval(example: Example) -> str:
    """A completion that returns nothing useful."""
    return "    return None\n"


def wrong_mbpp(example: Example) -> str:
    """The function the tests call, defined to return nothing useful."""
    names = re.findall(r"^\s*def\s+(\w+)", example.gold_output, re.MULTILINE)
    tested = [n for n in names if re.search(rf"\b{n}\s*\(", example.reference["tests"])] or names or ["solution"]
    return f"[BEGIN]\ndef {tested[0]}(*args, **kwargs):\n    return None\n[DONE]"


WRONG: dict[str, Callable[[Example], str]] = {
    "gsm8k": wrong_gsm8k,
    "math500": wrong_math500,
    "humaneval": wrong_humaneval,
    "mbpp": wrong_mbpp,
}


def split_by_score(
    task: Task, examples: list[Example], make_output: Callable[[Example], str]
) -> tuple[list[Example], list[Example]]:
    """The examples whose output from ``make_output`` the task scores correct, and those it scores incorrect."""
    correct, incorrect = [], []
    for example in examples:
        (correct if task.score(example, make_output(example)).correct else incorrect).append(example)
    return correct, incorrect


def check_task(name: str, limit: int | None = None) -> tuple[int, list[Example], list[Example]]:
    """Score gold and wrong outputs for one task: (number checked, gold rejected, wrong accepted)."""
    task = get_task(name)
    examples = task.examples()[:limit]
    _, gold_rejected = split_by_score(task, examples, lambda e: e.gold_output)
    wrong_accepted, _ = split_by_score(task, examples, WRONG[name])
    return len(examples), gold_rejected, wrong_accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--limit", type=int, default=None, help="check only the first N problems of each task")
    args = parser.parse_args(argv)
    ok = True
    for name in args.tasks:
        started = time.monotonic()
        n, gold_rejected, wrong_accepted = check_task(name, args.limit)
        gold_pct = 100 * (n - len(gold_rejected)) / max(n, 1)
        wrong_pct = 100 * len(wrong_accepted) / max(n, 1)
        print(
            f"{name:10s} {n:5d} problems  gold correct {n - len(gold_rejected):5d}/{n} ({gold_pct:5.1f}%)  "
            f"wrong correct {len(wrong_accepted):5d}/{n} ({wrong_pct:5.1f}%)  {time.monotonic() - started:6.1f}s",
            flush=True,
        )
        for e in gold_rejected[:10]:
            print(f"  gold rejected: {e.id}")
        for e in wrong_accepted[:10]:
            print(f"  wrong accepted: {e.id}")
        ok = ok and not gold_rejected and not wrong_accepted
    print("all good" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
