"""The drafter's cost as reported: its one-time load apart from per-problem drafting seconds, loaded
before any batch is timed, and shown against the diffusion model's seconds of the same run."""

from __future__ import annotations

import json

import pytest

from fewstep.drafting import drafter as drafting
from fewstep.evaluation.bench import markdown_table
from fewstep.evaluation.request import EvalRequest
from fewstep.evaluation.runner import prepare, run_eval
from fewstep.evaluation.summary import one_line


def test_load_seconds_are_measured_once(random_ar_dir, monkeypatch):
    monkeypatch.setattr(drafting, "_LOADED", {})
    monkeypatch.setattr(drafting, "_LOAD_S", {})
    first = drafting.load_seconds(str(random_ar_dir))
    assert first > 0
    model = drafting.load_drafter(str(random_ar_dir))
    assert drafting.load_seconds(str(random_ar_dir)) == first and drafting.load_drafter(str(random_ar_dir)) is model


def test_eval_preloads_the_drafter_and_reports_its_load_apart(random_dlm_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(drafting, "_LOADED", {})
    monkeypatch.setattr(drafting, "_LOAD_S", {})
    req = EvalRequest(task="arith", model=str(random_dlm_dir), out=str(tmp_path / "run"), strategy="threshold",
                      limit=4, batch_size=2, settings=("drafter=tiny-ar", "init=inject"))
    run = prepare(req)
    assert run.drafter_load_s is not None and run.drafter_load_s > 0
    assert ("tiny-ar", "cpu", "None") in drafting._LOADED  # loaded before the first batch is timed
    summary = run_eval(req, progress=False)
    assert summary["drafter_load_s"] == run.drafter_load_s  # the one load of this process
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all("drafter_load_s" not in r and r["drafter_s"] > 0 for r in rows)
    assert 0 < summary["drafter_s"] == pytest.approx(sum(r["drafter_s"] for r in rows))
    assert summary["drafter_s"] + summary["model_s"] <= summary["wall_s"]  # drafting is inside wall time
    line = one_line(summary)
    assert f"drafter {summary['drafter_s']:.2f}s vs model {summary['model_s']:.2f}s" in line
    assert f"load {summary['drafter_load_s']:.2f}s once" in line


def test_eval_without_a_drafter_reports_no_load(random_dlm_dir, tmp_path):
    summary = run_eval(EvalRequest(task="arith", model=str(random_dlm_dir), out=str(tmp_path / "run"),
                                   strategy="threshold", limit=2), progress=False)
    assert "drafter_load_s" not in summary and summary["drafter_s"] == 0
    assert "drafter" not in one_line(summary)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line[2:-2].split(" | ")]


def test_bench_table_shows_drafter_seconds_against_model_seconds():
    vs = {"nfe_ratio": 1.0, "wall_ratio": 1.0, "accuracy_diff": 0.0, "accuracy_diff_ci95": [0.0, 0.0]}
    base = {"strategy": "threshold", "accuracy": 0.9, "accuracy_ci95": [0.8, 0.95], "nfe_mean": 3.0,
            "tokens_per_forward": 8.0, "wall_s": 2.0, "model_s": 1.5, "overhead_fraction": 0.1, "vs_first": vs}
    result = {"task": "arith", "model": "tiny-dlm", "n": 10, "batch_size": 10, "repeats": 1, "results": [
        {**base, "spec": "threshold"},
        {**base, "spec": "threshold+draft", "drafter_nfe_mean": 37.0, "drafter_s": 0.25, "model_s": 1.25,
         "drafter_load_s": 0.5},
    ]}
    _, _, header, _, plain, drafted, _ = markdown_table(result).split("\n")
    rows = [dict(zip(_cells(header), _cells(line), strict=True)) for line in (plain, drafted)]
    assert {k: rows[1][k] for k in ("drafter NFE", "drafter s", "model s", "drafter load s")} == \
        {"drafter NFE": "37.0", "drafter s": "0.25", "model s": "1.25", "drafter load s": "0.50"}
    assert rows[0]["drafter load s"] == "-" and rows[0]["model s"] == "1.50"
