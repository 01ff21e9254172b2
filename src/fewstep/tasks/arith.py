"""The lab task ``arith``: procedurally generated word problems in GSM8K's shape.

A problem is a short story over one quantity that changes in 1 to 3 steps (+, -, x, exact /);
the solution writes one equation per step and ends with ``#### <answer>``::

    question: Mia has 7 pens . She buys 5 more . She gives away 3 . How many pens does Mia have ?
    solution: 7 + 5 = 12 . 12 - 3 = 9 . #### 9

Every value stays in 1..99 so that each number is a single token of the lab models' word-level
tokenizer, and the answer's length depends only on the number of steps, never on the results.
Later equations start from earlier results, so a decoder that commits many tokens at once must
compute a chain of lookups in a single forward pass: that is what makes parallel decoding costly.

The test set is fixed (seed ``TEST_SEED``, ``TEST_SIZE`` problems); training problems come from
other seeds and are filtered against the test questions, so no test question is ever trained on.
The validation set (seed ``VAL_SEED``, as many problems as the test set) is drawn the same way and
filtered against the test questions too: decoding settings are chosen on it, never on the test set.
:class:`ArithTask` puts the test set behind the task interface (``fewstep eval --task arith``),
:class:`ArithValTask` the validation set (``--task arith-val``); both score an output by exact
match of the number after its last ``####``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from fewstep.tasks.base import Example, Score
from fewstep.tasks.jsonl import TEXT, read_jsonl

NAMES_SHE = ("Mia", "Ava", "Zoe", "Lily", "Emma", "Nora", "Ruth", "Sara")
NAMES_HE = ("Tom", "Sam", "Leo", "Ben", "Max", "Jack", "Omar", "Ivan")
OBJECTS = ("pens", "apples", "coins", "books", "cards", "shells", "eggs", "stamps")

MAX_VALUE = 99
TEST_SEED = 20260101
TEST_SIZE = 1000
VAL_SEED = 20260707
ANSWER_RE = re.compile(r"####\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str
    answer: int
    steps: int


def _start(rng: random.Random, name: str, obj: str, a: int) -> str:
    return rng.choice((f"{name} has {a} {obj} .", f"{name} owns {a} {obj} ."))


def _step(rng: random.Random, x: int, he: bool) -> tuple[str, str, int]:
    """One story step applied to the value ``x``: (sentence, equation, new value)."""
    pron, obj_pron = ("He", "him") if he else ("She", "her")
    friend = rng.choice(NAMES_SHE + NAMES_HE)
    ops = []
    if x < MAX_VALUE:
        ops.append("+")
    if x > 1:
        ops.append("-")
    if 2 * x <= MAX_VALUE:
        ops.append("x")
    if any(x % k == 0 for k in range(2, 6)):
        ops.append("/")
    op = rng.choice(ops)
    if op == "+":
        b = rng.randint(1, min(20, MAX_VALUE - x))
        text = rng.choice(
            (f"{pron} buys {b} more .", f"{pron} finds {b} more .", f"{friend} gives {obj_pron} {b} more .")
        )
        return text, f"{x} + {b} = {x + b} .", x + b
    if op == "-":
        b = rng.randint(1, min(20, x - 1))
        text = rng.choice((f"{pron} gives away {b} .", f"{pron} loses {b} .", f"{pron} sells {b} ."))
        return text, f"{x} - {b} = {x - b} .", x - b
    if op == "x":
        k = rng.randint(2, min(5, MAX_VALUE // x))
        words = {2: "doubles them", 3: "triples them"}
        text = f"{pron} {words[k]} ." if k in words and rng.random() < 0.5 else f"{pron} gets {k} times as many ."
        return text, f"{x} x {k} = {x * k} .", x * k
    k = rng.choice([k for k in range(2, 6) if x % k == 0])
    fraction = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}[k]
    return f"{pron} keeps {fraction} of them .", f"{x} / {k} = {x // k} .", x // k


def make_problem(rng: random.Random) -> Problem:
    """Draw one problem; all randomness comes from ``rng``."""
    he = rng.random() < 0.5
    name = rng.choice(NAMES_HE if he else NAMES_SHE)
    obj = rng.choice(OBJECTS)
    n_steps = rng.randint(1, 3)
    x = rng.randint(2, 40)
    sentences = [_start(rng, name, obj, x)]
    equations = []
    for _ in range(n_steps):
        text, eq, x = _step(rng, x, he)
        sentences.append(text)
        equations.append(eq)
    sentences.append(rng.choice((f"How many {obj} does {name} have ?", f"How many {obj} are left ?")))
    solution = " ".join(equations) + f" #### {x}"
    return Problem(" ".join(sentences), solution, x, n_steps)


def _distinct(seed: int, size: int, banned: frozenset[str] = frozenset()) -> tuple[Problem, ...]:
    """The first ``size`` distinct questions that seed ``seed`` draws, skipping ``banned`` ones."""
    rng = random.Random(seed)
    seen: set[str] = set(banned)
    out: list[Problem] = []
    while len(out) < size:
        p = make_problem(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return tuple(out)


@lru_cache(maxsize=4)
def test_set(size: int = TEST_SIZE, seed: int = TEST_SEED) -> tuple[Problem, ...]:
    """The fixed, seeded test set (distinct questions)."""
    return _distinct(seed, size)


@lru_cache(maxsize=1)
def _test_questions() -> frozenset[str]:
    return frozenset(p.question for p in test_set())


@lru_cache(maxsize=2)
def val_set(size: int = TEST_SIZE, seed: int = VAL_SEED) -> tuple[Problem, ...]:
    """The fixed, seeded validation set: distinct questions, none of them a test question. (Training
    streams are filtered against the test questions only, so a short validation question may also
    be drawn in training, as it may be by any other seed.)"""
    if seed == TEST_SEED:
        raise ValueError("the test seed cannot be used for validation")
    return _distinct(seed, size, _test_questions())


def train_problems(seed: int) -> Iterator[Problem]:
    """An endless stream of training problems, never one of the test questions."""
    if seed == TEST_SEED:
        raise ValueError("the test seed cannot be used for training")
    rng = random.Random(seed)
    banned = _test_questions()
    while True:
        p = make_problem(rng)
        if p.question not in banned:
            yield p


def extract_answer(text: str) -> int | None:
    """The integer after the last ``####`` in ``text``; None when there is none."""
    found = ANSWER_RE.findall(text)
    return int(found[-1]) if found else None


def vocabulary() -> list[str]:
    """Every word the task can produce (the lab diffusion model's word-level vocabulary)."""
    words = {str(i) for i in range(MAX_VALUE + 1)}
    words.update(NAMES_SHE + NAMES_HE + OBJECTS)
    words.update("+ - x / = . ? #### Q: A:".split())
    rng = random.Random(0)
    for _ in range(20000):
        p = make_problem(rng)
        words.update(p.question.split())
        words.update(p.solution.split())
    return sorted(words)


class ArithTask:
    """``arith`` behind the task interface: the fixed test set (or ``--data`` rows with ``question``
    and ``answer``), scored by exact match of the ``#### N`` answer."""

    name = "arith"
    default_gen_length = 24

    def problems(self) -> tuple[Problem, ...]:
        """The task's own problems (used when no ``--data`` is given)."""
        return test_set()

    def examples(self, data: str | None = None) -> list[Example]:
        if data is not None:
            rows = read_jsonl(data, required=("question", "answer"), kinds={"question": TEXT, "answer": TEXT})
            return [
                Example(str(i), r["question"], extract_answer(r["answer"]), r["answer"]) for i, r in enumerate(rows)
            ]
        return [
            Example(str(i), p.question, p.answer, p.solution, {"steps": p.steps}) for i, p in enumerate(self.problems())
        ]

    def score(self, example: Example, output: str) -> Score:
        got = extract_answer(output)
        return Score(got is not None and got == example.reference, got)


class ArithValTask(ArithTask):
    """``arith-val``: the validation set (:func:`val_set`) behind the same interface and scoring; choose
    decoding settings here, then report them once on ``arith``."""

    name = "arith-val"

    def problems(self) -> tuple[Problem, ...]:
        return val_set()
