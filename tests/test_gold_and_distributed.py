"""``--model gold`` (reference solutions through the scoring path) and multi-process ``fewstep eval``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.cli import main
from fewstep.errors import ConfigError, TaskError

SMALL = ["--task", "arith", "--limit", "8", "--batch-size", "3", "--set", "steps=12", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def per_problem(out: Path) -> dict[str, tuple]:
    return {r["id"]: (r["output"], r["correct"], r["nfe"]) for r in rows(out)}


@pytest.fixture(scope="module")
def one_process(random_dlm_dir, tmp_path_factory) -> Path:
    """The reference: the small eval in this process."""
    out = tmp_path_factory.mktemp("eval") / "one"
    assert main(["eval", "--model", str(random_dlm_dir), "--out", str(out), *SMALL]) == 0
    return out


# --- gold ------------------------------------------------------------------------------------------------


def test_gold_scores_every_arith_problem(capsys, tmp_path):
    code, stdout, _ = run(capsys, "eval", "--task", "arith", "--model", "gold", "--out", str(tmp_path), "--no-progress")
    assert code == 0 and "accuracy 100.0%" in stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 1000 and summary["accuracy"] == 1.0
    assert summary["nfe_mean"] == 0 and summary["tokens_per_forward"] == 0 and summary["strategy"] == "none"
    first = rows(tmp_path)[0]
    assert first["output"].endswith(f"#### {first['reference']}") and first["nfe"] == 0
    assert first["answer_tokens"] == len(first["output"].split())


def test_gold_through_gsm8k(capsys, tmp_path):
    from fewstep.tasks.extract import dataset_file

    try:
        dataset_file("gsm8k_test.jsonl")
    except TaskError:
        pytest.skip("gsm8k_test.jsonl is not in the shared datasets folder")
    code, stdout, _ = run(capsys, "eval", "--task", "gsm8k", "--model", "gold", "--limit", "5",
                          "--out", str(tmp_path), "--no-progress")
    assert code == 0 and json.loads((tmp_path / "summary.json").read_text())["accuracy"] == 1.0


def test_gold_refuses_to_decode_prompts(capsys):
    import fewstep

    gold = fewstep.load_model("gold")
    for prompts in (["Mia has 7 pens ."], [[5, 6, 7]]):
        with pytest.raises(ConfigError, match="gold model answers task problems"):
            fewstep.generate(gold, prompts)
    code, _, err = run(capsys, "generate", "Mia has 7 pens .", "--model", "gold")
    assert code == 2 and err.count("\n") == 1 and "gold model" in err


# --- several processes -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one(capsys, random_dlm_dir, one_process, tmp_path):
    code, stdout, _ = run(capsys, "eval", "--model", str(random_dlm_dir), "--out", str(tmp_path),
                          "--num-processes", "2", *SMALL)
    assert code == 0 and stdout.count("accuracy") == 1
    assert per_problem(tmp_path) == per_problem(one_process)
    assert [r["id"] for r in rows(tmp_path)] == [str(i) for i in range(8)]
    assert {r["rank"] for r in rows(tmp_path)} == {0, 1}
    assert not list(tmp_path.glob("samples.rank*.jsonl"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    reference = json.loads((one_process / "summary.json").read_text())
    assert summary["num_processes"] == 2 and reference["num_processes"] == 1
    for key in ("n", "correct", "accuracy", "nfe_mean", "tokens_per_forward"):
        assert summary[key] == reference[key]
    assert summary["wall_s"] == max(summary["wall_s_per_rank"]) > 0


@pytest.mark.slow
def test_torchrun_launch_matches_one_process(random_dlm_dir, one_process, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "fewstep.cli", "eval",
         "--model", str(random_dlm_dir), "--out", str(tmp_path), *SMALL],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("accuracy") == 1  # printed by rank 0 only
    assert per_problem(tmp_path) == per_problem(one_process)
    assert json.loads((tmp_path / "summary.json").read_text())["num_processes"] == 2


@pytest.mark.slow
def test_worker_error_is_one_clear_line(capsys, random_dlm_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    question = " ".join(["Mia has 7 pens ."] * 30)  # 120 words: beyond the 96-token context
    data.write_text(json.dumps({"question": question, "answer": "#### 7"}) + "\n")
    code, _, err = run(capsys, "eval", "--task", "arith", "--data", str(data), "--model", str(random_dlm_dir),
                       "--out", str(tmp_path / "run"), "--num-processes", "2", "--no-progress")
    assert code == 2
    assert err.startswith("fewstep: error: prompt 0 has") and "exceeds the model's context" in err
    assert err.count("\n") == 1


def test_resume_merges_rank_files(capsys, random_dlm_dir, one_process, tmp_path):
    """Rank files left by an interrupted multi-process run are kept, and merged by a one-process rerun."""
    done = rows(one_process)
    shutil.copy(one_process / "run.json", tmp_path / "run.json")  # written before any row
    (tmp_path / "samples.jsonl").write_text("")
    left = [{**r, "output": "kept", "rank": 1} for r in done[1:6:2]]  # ids 1, 3, 5 of rank 1 of 2
    (tmp_path / "samples.rank1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in left))
    code, _, _ = run(capsys, "eval", "--model", str(random_dlm_dir), "--out", str(tmp_path), *SMALL)
    assert code == 0
    merged = rows(tmp_path)
    assert [r["id"] for r in merged] == [str(i) for i in range(8)]
    assert [r["output"] for r in merged if r["output"] == "kept"] == ["kept"] * 3
    assert not (tmp_path / "samples.rank1.jsonl").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 8


def test_bad_process_count(capsys, random_dlm_dir, tmp_path):
    code, _, err = run(capsys, "eval", "--model", str(random_dlm_dir), "--out", str(tmp_path),
                       "--num-processes", "0", *SMALL)
    assert code == 2 and err == "fewstep: error: eval: argument --num-processes: must be >= 1, got 0\n"


# --- gsm8k end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_context_dlm(tmp_path_factory, make_random_dlm) -> Path:
    """A random model like ``random_dlm_dir`` but with a 512-token context, for GSM8K-length prompts."""
    return make_random_dlm(tmp_path_factory.mktemp("models") / "random-dlm-512", max_len=512)


def test_gsm8k_end_to_end(capsys, random_dlm_dir, long_context_dlm, tmp_path):
    from fewstep.tasks.extract import dataset_file

    try:
        dataset_file("gsm8k_test.jsonl")
    except TaskError:
        pytest.skip("gsm8k_test.jsonl is not in the shared datasets folder")
    code, _, err = run(capsys, "eval", "--task", "gsm8k", "--model", str(random_dlm_dir), "--limit", "4",
                       "--out", str(tmp_path / "short"), "--no-progress")
    assert code == 2 and "exceeds the model's context of 96 tokens" in err and err.count("\n") == 1

    out = tmp_path / "long"
    code, stdout, _ = run(capsys, "eval", "--task", "gsm8k", "--model", str(long_context_dlm), "--limit", "4",
                          "--set", "steps=12", "--out", str(out), "--no-progress")
    assert code == 0 and stdout.startswith("gsm8k ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["nfe_mean"] == 12
    assert summary["accuracy"] == sum(r["correct"] for r in rows(out)) / 4
    assert all(r["output"] and r["nfe"] == 12 for r in rows(out))
