"""The command line: happy paths on a tiny random model, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fewstep
from fewstep.cli import main
from fewstep.evaluation.stats import wilson


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_prints_answer(capsys, random_dlm_dir):
    code, out, err = run(capsys, "generate", "Mia has 7 pens .", "--model", str(random_dlm_dir), "--stats")
    assert code == 0
    [expected] = fewstep.generate(fewstep.load_model(random_dlm_dir), ["Mia has 7 pens ."], fewstep.DecodeConfig())
    assert expected.text.strip() and out.strip() == expected.text.strip()
    assert "nfe=24" in err


def test_generate_threads(capsys, random_dlm_dir, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert run(capsys, "generate", "Mia has 7 pens .", "--model", str(random_dlm_dir))[0] == 0
        assert torch.get_num_threads() == 1  # a small model on CPU: one thread
        assert run(capsys, "generate", "Mia has 7 pens .", "--model", str(random_dlm_dir), "--threads", "2")[0] == 0
        assert torch.get_num_threads() == 2
        code, _, err = run(capsys, "generate", "Mia has 7 pens .", "--threads", "0")
        assert code == 2 and "must be >= 1" in err and len(err.strip().splitlines()) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--set", "gen_length=20"], "multiple of block_length"),
        (["--set", "steps=5", "--set", "block_length=8"], "multiple of the number of blocks"),
        (["--set", "colour=red"], "has no setting 'colour'"),
        (["--strategy", "llada", "--set", "tau=0.5"], "strategy 'llada' has no setting 'tau'"),
        (["--set", "steps=0.5"], "steps expects a int"),
        (["--strategy", "warp"], "unknown strategy"),
        (["--set", "gen_length=96", "--set", "block_length=8", "--set", "steps=96"], "exceeds the model's context"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, random_dlm_dir, extra, message):
    args = ["generate", "Mia has 7 pens .", "--model", str(random_dlm_dir), *extra]
    if extra[0] == "--model":
        args = ["generate", "Mia has 7 pens .", *extra]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("fewstep: error: ")


@pytest.mark.slow
def test_console_script_exit_status(random_dlm_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "fewstep.cli", "generate", "hi", "--model", "/no/such/dir"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fewstep: error: unknown model '/no/such/dir': not a bundled name (tiny-dlm, tiny-ar, tiny-dlm-cd, "
        "tiny-dlm-edit, tiny-dlm-traj) nor a model directory"
    ]
    assert "Traceback" not in proc.stderr


def test_eval_writes_results_and_resumes(capsys, random_dlm_dir, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--task", "arith", "--model", str(random_dlm_dir), "--limit", "6", "--batch-size", "4",
            "--out", str(out), "--set", "steps=12", "--no-progress"]
    code, stdout, _ = run(capsys, *args)
    assert code == 0 and "accuracy" in stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in ("task", "model", "strategy", "n", "accuracy", "accuracy_ci95", "nfe_mean", "tokens_per_forward",
                "drafter_nfe_mean", "wall_s", "model_s", "config"):
        assert key in summary
    assert summary["n"] == 6 and summary["nfe_mean"] == 12
    assert summary["config"]["steps"] == 12 and summary["config"]["gen_length"] == 24
    assert 0 < summary["model_s"] <= summary["wall_s"]
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6
    correct = sum(json.loads(x)["correct"] for x in lines)
    assert summary["accuracy"] == correct / 6 and summary["accuracy_ci95"] == list(wilson(correct, 6))

    # Interrupted run: drop the last two samples and cut a line in half; the rerun completes it.
    (out / "samples.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    code, _, _ = run(capsys, *args[:5], "--limit", "8", *args[7:])
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert code == 0
    assert [r["id"] for r in rows] == [str(i) for i in range(8)]
    assert json.loads((out / "summary.json").read_text())["n"] == 8

    # A different configuration in the same directory is refused.
    code, _, err = run(capsys, *args[:-3], "--set", "steps=6", "--no-progress")
    assert code == 2 and "different run" in err
