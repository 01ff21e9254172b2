"""Rough edges a new user can hit, each ending in one line and exit status 2 (a typed error in the
library): task data with a field of the wrong type, a decode setting in range whose arithmetic
would overflow, and training options that the new model cannot hold."""

from __future__ import annotations

import json
import re

import pytest

from fewstep.cli import main
from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError, TaskError
from fewstep.tasks.base import get_task
from fewstep.tasks.jsonl import NUMBER, TEXT, TEXT_LIST, check_fields
from fewstep.training.config import TrainConfig

GOOD = {
    "arith": {"question": "Mia has 7 pens .", "answer": "7 = 7 . #### 7"},
    "gsm8k": {"question": "Mia has 7 pens.", "answer": "She has 7.\n#### 7"},
    "math500": {"problem": "What is 1+1?", "solution": "It is $\\boxed{2}$.", "answer": "2"},
    "humaneval": {"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                  "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"},
    "mbpp": {"task_id": 11, "text": "Write f.", "code": "def f(): return 1", "test_list": ["assert f() == 1"],
             "test_setup_code": ""},
}
WRONG = [  # (task, field, wrong value): a number where the text belongs, and other JSON types
    ("arith", "question", 42), ("arith", "answer", 7),
    ("gsm8k", "question", 42), ("gsm8k", "answer", ["#### 7"]),
    ("math500", "problem", 42), ("math500", "solution", None), ("math500", "answer", True),
    ("humaneval", "prompt", 42), ("humaneval", "test", {"a": 1}), ("humaneval", "entry_point", 3),
    ("mbpp", "text", 42), ("mbpp", "test_list", "assert f() == 1"), ("mbpp", "test_list", [1]),
    ("mbpp", "code", 3.5), ("mbpp", "test_setup_code", 0), ("mbpp", "task_id", None),
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("task", sorted(GOOD))
def test_good_rows_load(task, tmp_path):
    assert len(get_task(task).examples(_write(tmp_path / "d.jsonl", [GOOD[task]]))) == 1


@pytest.mark.parametrize("task, field, value", WRONG)
def test_a_field_of_the_wrong_type_is_a_task_error(task, field, value, tmp_path):
    path = _write(tmp_path / "d.jsonl", [GOOD[task], {**GOOD[task], field: value}])
    with pytest.raises(TaskError, match=rf"d.jsonl: row 2: field '{field}' is not "):
        get_task(task).examples(path)


def test_math500_takes_a_numeric_answer(tmp_path):
    assert get_task("math500").examples(_write(tmp_path / "d.jsonl", [{**GOOD["math500"], "answer": 2}]))


def test_check_fields_names_what_it_got():
    with pytest.raises(TaskError, match=r"src: row 1: field 'q' is not text or a number: got true/false \(True\)"):
        check_fields([{"q": True}], {"q": (TEXT, NUMBER)}, "src")
    check_fields([{"q": ["a"]}, {}], {"q": TEXT_LIST}, "src")  # a missing field is not this check's concern


def _one_line_exit_2(capsys, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fewstep: error: ") and fragment in err, err
    assert "Traceback" not in err


def test_cli_wrong_type_in_data_is_one_line(capsys, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{**GOOD["arith"], "question": 42}])
    _one_line_exit_2(capsys, ["eval", "--task", "arith", "--model", "gold", "--data", path, "--no-progress",
                              "--out", str(tmp_path / "out")], "field 'question' is not text: got a number (42)")


@pytest.mark.parametrize("setting, fragment", [
    ({"cfg_scale": 1e308}, "cfg_scale=1e+308 would overflow"),
    ({"cfg_scale": 1e35}, "cfg_scale=1e+35 would overflow"),
    ({"temperature": 1e308}, "temperature=1e+308 would overflow"),
])
def test_overflowing_settings_are_refused(setting, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        DecodeConfig(**setting)


def test_large_but_finite_settings_still_work():
    assert DecodeConfig(cfg_scale=1e30).cfg_scale == 1e30 and DecodeConfig(temperature=1e300).temperature == 1e300
    assert DecodeConfig(eos_logit_penalty=1e308).eos_logit_penalty == 1e308  # -inf on EOS: EOS is never chosen


def test_cli_overflowing_guidance_is_one_line(capsys, random_dlm_dir):
    _one_line_exit_2(capsys, ["generate", "Mia has 7 pens .", "--model", str(random_dlm_dir), "--set",
                              "cfg_scale=1e308"], "cfg_scale=1e+308 would overflow the guided logits")


@pytest.mark.parametrize("options, fragment", [
    ({"gen_length": 600}, "gen_length=600 does not fit the model's context of 512 positions"),
    ({"gen_length": 5}, "gen_length=5 cannot hold the lab task's answers"),
    ({"d_model": 12, "n_heads": 4}, "head size must be even"),
    ({"kind": "ar", "attention_block_length": 4}, "attention_block_length is for --kind dlm only"),
])
def test_training_options_the_model_cannot_hold(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**options)


def test_cli_train_beyond_the_context_stops_before_training(capsys, tmp_path):
    out = tmp_path / "run"
    _one_line_exit_2(capsys, ["train", "--gen-length", "600", "--steps", "1", "--no-progress", "--out", str(out)],
                     "gen_length=600 does not fit")
    assert not out.exists()  # nothing trained, nothing written
