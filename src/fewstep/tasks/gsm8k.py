"""GSM8K: grade-school maths word problems, scored by the final number.

Data: ``question`` and ``answer`` (a worked solution ending in ``#### N``). The prediction is read from
the output by the first of these that yields a number: ``#### N``, the last ``\\boxed{N}``, "The answer
is N", the last number in the text. The answer's value is a plain number (commas, ``$``, ``%`` and a
trailing full stop removed), else a LaTeX value computed by math-verify (``\\frac{1}{2}`` is 1/2), else
its first number (``72 clips`` is 72); values are compared exactly. Prompts are zero-shot or k-shot
(``num_shots``), the shots being the first rows of the train file
(or the same rows kept below when the file is not there).
"""

from __future__ import annotations

import re
from fractions import Fraction

from fewstep.errors import TaskError
from fewstep.tasks.base import Example, Score
from fewstep.tasks.extract import (
    after_marker,
    answer_is,
    answer_value,
    format_number,
    last_boxed,
    last_number,
    load_rows,
    parse_number,
)
from fewstep.tasks.jsonl import TEXT

TEST_FILE = "gsm8k_test.jsonl"
KINDS: dict[str, str | tuple[str, ...]] = {"question": TEXT, "answer": TEXT}
TRAIN_FILE = "gsm8k_train.jsonl"
ZERO_SHOT_INSTRUCTION = "Solve the problem step by step. End with the final answer on its own line as: #### <number>"
_CALCULATOR = re.compile(r"<<[^>]*>>")

# The first rows of gsm8k_train.jsonl (calculator annotations removed), for k-shot prompts without the file.
FIXED_SHOTS: tuple[tuple[str, str], ...] = (
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n#### 10",
    ),
    (
        "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
        "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
        "How much more money does Betty need to buy the wallet?",
        "In the beginning, Betty has only 100 / 2 = $50.\nBetty's grandparents gave her 15 * 2 = $30.\n"
        "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.\n#### 5",
    ),
    (
        "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, she read twice as "
        "many pages as yesterday. If she wants to read half of the remaining pages tomorrow, how many pages should "
        "she read?",
        "Maila read 12 x 2 = 24 pages today.\nSo she was able to read a total of 12 + 24 = 36 pages since yesterday.\n"
        "There are 120 - 36 = 84 pages left to be read.\nSince she wants to read half of the remaining pages "
        "tomorrow, then she should read 84/2 = 42 pages.\n#### 42",
    ),
    (
        "James writes a 3-page letter to 2 different friends twice a week.  How many pages does he write a year?",
        "He writes each friend 3*2=6 pages a week\nSo he writes 6*2=12 pages every week\n"
        "That means he writes 12*52=624 pages a year\n#### 624",
    ),
    (
        "Mark has a garden with flowers. He planted plants of three different colors in it. Ten of them are "
        "yellow, and there are 80% more of those in purple. There are only 25% as many green flowers as there are "
        "yellow and purple flowers. How many flowers does Mark have in his garden?",
        "There are 80/100 * 10 = 8 more purple flowers than yellow flowers.\nSo in Mark's garden, there are "
        "10 + 8 = 18 purple flowers.\nPurple and yellow flowers sum up to 10 + 18 = 28 flowers.\nThat means in "
        "Mark's garden there are 25/100 * 28 = 7 green flowers.\nSo in total Mark has 28 + 7 = 35 plants in his "
        "garden.\n#### 35",
    ),
    (
        "Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas. "
        "A large pizza has 16 slices and a small pizza has 8 slices. If he eats it all, how many pieces does he "
        "eat that day?",
        "He eats 32 from the largest pizzas because 2 x 16 = 32\nHe eats 16 from the small pizza because "
        "2 x 8 = 16\nHe eats 48 pieces because 32 + 16 = 48\n#### 48",
    ),
    (
        "Ken created a care package to send to his brother, who was away at boarding school.  Ken placed a box on "
        "a scale, and then he poured into the box enough jelly beans to bring the weight to 2 pounds.  Then, he "
        "added enough brownies to cause the weight to triple.  Next, he added another 2 pounds of jelly beans.  "
        "And finally, he added enough gummy worms to double the weight once again.  What was the final weight of "
        "the box of goodies, in pounds?",
        "To the initial 2 pounds of jelly beans, he added enough brownies to cause the weight to triple, bringing "
        "the weight to 2*3=6 pounds.\nNext, he added another 2 pounds of jelly beans, bringing the weight to "
        "6+2=8 pounds.\nAnd finally, he added enough gummy worms to double the weight once again, to a final "
        "weight of 8*2=16 pounds.\n#### 16",
    ),
)


def clean_solution(answer: str) -> str:
    """A reference solution as a model would write it: the ``<<calculator>>`` annotations removed."""
    return _CALCULATOR.sub("", answer).strip()


def gold_answer(answer: str) -> Fraction:
    """The number after ``####`` in a reference solution."""
    tail = after_marker(answer, "####")
    value = parse_number(tail) if tail is not None else None
    if value is None:
        raise TaskError(f"GSM8K answer without a number after '####': {answer[-80:]!r}")
    return value


def extract_prediction(output: str) -> tuple[Fraction | None, str]:
    """The answer a model gave and the rule that found it: ``####``, ``boxed``, ``answer is``, ``last number``."""
    for rule, segment in (
        ("####", after_marker(output, "####")),
        ("boxed", last_boxed(output)),
        ("answer is", answer_is(output)),
    ):
        value = answer_value(segment) if segment is not None else None
        if value is not None:
            return value, rule
    value = last_number(output)
    return value, "last number" if value is not None else "none"


def format_question(question: str, shots: tuple[tuple[str, str], ...]) -> str:
    """The prompt: the instruction and question (zero-shot), or Question/Answer pairs then the question."""
    if not shots:
        return f"{question}\n{ZERO_SHOT_INSTRUCTION}"
    context = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return f"{context}Question: {question}\nAnswer:"


def load_shots(num_shots: int) -> tuple[tuple[str, str], ...]:
    """The first ``num_shots`` train rows, from the train file when present, else from FIXED_SHOTS."""
    if num_shots <= 0:
        return ()
    try:
        rows = load_rows(None, TRAIN_FILE, required=("question", "answer"), kinds=KINDS)
        shots = tuple((r["question"], clean_solution(r["answer"])) for r in rows[:num_shots])
    except TaskError:
        shots = FIXED_SHOTS[:num_shots]
    if len(shots) < num_shots:
        raise TaskError(f"gsm8k: {num_shots} shots asked for, only {len(shots)} available")
    return shots


class GSM8KTask:
    name = "gsm8k"
    default_gen_length = 256

    def __init__(self, num_shots: int = 0) -> None:
        if num_shots < 0:
            raise TaskError(f"num_shots must be >= 0, got {num_shots}")
        self.num_shots = num_shots

    def examples(self, data: str | None = None) -> list[Example]:
        """The test rows (``--data`` or the local gsm8k_test.jsonl) as prompts with their gold numbers."""
        rows = load_rows(data, TEST_FILE, required=("question", "answer"), kinds=KINDS)
        shots = load_shots(self.num_shots)
        return [
            Example(
                id=str(i),
                prompt=format_question(r["question"], shots),
                reference=format_number(gold_answer(r["answer"])),
                gold_output=clean_solution(r["answer"]),
            )
            for i, r in enumerate(rows)
        ]

    def score(self, example: Example, output: str) -> Score:
        """Correct when the extracted number equals the reference number exactly."""
        value, rule = extract_prediction(output)
        if value is None:
            return Score(False, None, "no number found")
        correct = value == parse_number(str(example.reference))
        return Score(correct, format_number(value), f"found by {rule}")
