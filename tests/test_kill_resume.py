"""Results survive SIGKILL: eval, bench and train killed at random moments (and in the middle of a
save) and rerun end exactly where an uninterrupted run ends; two writers never share a directory.

Each run is a separate process so that SIGKILL hits it like a user's kill: a child forked from a server
that has already imported fewstep (tests/fork_cli.py), so that a random kill hits the command's work
rather than its imports. The references they must equal are fresh ``python -m fewstep.cli`` processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fork_cli import ForkServer, dying_patch

pytestmark = pytest.mark.slow  # every test starts fewstep processes

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module", autouse=True)
def server():
    """The fork server that runs this module's commands (see tests/fork_cli.py): a kill at a random
    moment hits the command's work, not its imports, and each run costs no start-up."""
    global FORKS
    FORKS = ForkServer(ENV)
    yield FORKS
    FORKS.close()


FORKS: ForkServer


def real_cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m fewstep.cli`` in a fresh interpreter: the references that the forked runs must equal."""
    return subprocess.run([sys.executable, "-m", "fewstep.cli", *argv], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return FORKS.run(list(argv), timeout=timeout)


def dying_cli(module: str, attr: str, nth: int, how: str, *argv: str) -> int:
    """Run a command in which the n-th call of module.attr SIGKILLs the process part way: ``how`` is
    "before" (nothing of that save written) or "half" (half of the bytes of a file written)."""
    return FORKS.run(list(argv), patch=dying_patch(module, attr, nth, how)).returncode


def kill_after(argv: list[str], delay: float) -> int | None:
    """Start the command, SIGKILL it after ``delay`` seconds; its return code if it finished first."""
    pid = FORKS.start(argv)
    code = FORKS.wait(pid, delay)
    if code is not None:
        return code
    os.kill(pid, signal.SIGKILL)
    FORKS.wait(pid)
    return None


def kill_then_finish(argv: list[str], rng: random.Random, seconds: float, kills: int) -> int:
    """SIGKILL the command ``kills`` times at random moments of a run (each rerun resumes), then let it
    finish; returns how many kills hit a running process."""
    hit = 0
    for _ in range(kills):
        if kill_after(argv, rng.uniform(0.02, seconds)) is not None:
            break  # it finished before the kill
        hit += 1
    done = cli(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("\n") <= 1
    print(f"{argv[0]}: {hit} of {kills} kills hit a running process")  # shown with pytest -s
    return hit


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    done = cli(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.monotonic() - t0


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def eval_rows(out: Path) -> list[tuple]:
    return [(r["id"], r["output"], r["correct"], r["nfe"]) for r in jsonl(out / "samples.jsonl")]


def eval_args(model: Path, out: Path) -> list[str]:
    return ["eval", "--task", "arith", "--model", str(model), "--limit", "10", "--batch-size", "2",
            "--set", "steps=12", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def reference(random_dlm_dir, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run in a fresh interpreter, and how long the same run takes forked (equal to it)."""
    root = tmp_path_factory.mktemp("kill")
    real = real_cli(*eval_args(random_dlm_dir, root / "reference"))
    assert real.returncode == 0, real.stderr[-2000:]
    seconds = timed(eval_args(random_dlm_dir, root / "forked"))
    assert_same_eval(root / "forked", root / "reference")
    return root / "reference", seconds


def assert_same_eval(out: Path, ref: Path) -> None:
    assert eval_rows(out) == eval_rows(ref)
    a, b = json.loads((out / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    for key in ("n", "correct", "accuracy", "nfe_mean", "tokens_per_forward", "config", "data_sha256"):
        assert a[key] == b[key], key
    assert not list(out.glob(".*.tmp")) and not (out / ".fewstep-lock").exists()


@pytest.mark.slow
def test_eval_killed_at_random_moments(random_dlm_dir, reference, tmp_path):
    ref, seconds = reference
    rng = random.Random(13)
    for trial in range(3):
        out = tmp_path / f"t{trial}"
        kill_then_finish(eval_args(random_dlm_dir, out), rng, seconds, kills=3)
        assert_same_eval(out, ref)


@pytest.mark.parametrize("nth,how", [(2, "before"), (3, "half"), pytest.param(6, "half", marks=pytest.mark.slow)])
def test_eval_killed_while_saving(random_dlm_dir, reference, tmp_path, nth, how):
    """Killed while writing run.json (the 2nd atomic write, after the lock holder's) or a summary;
    the rerun ends like the uninterrupted run."""
    out = tmp_path / "run"
    args = eval_args(random_dlm_dir, out)
    assert dying_cli("fewstep.files", "atomic_write_bytes", nth, how, *args) == -signal.SIGKILL
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") <= 1
    assert_same_eval(out, reference[0])


def test_resume_with_another_configuration_is_refused(random_dlm_dir, tmp_path):
    """A run killed before its first summary (only run.json and rows written) is still identified."""
    out = tmp_path / "run"
    args = eval_args(random_dlm_dir, out)
    assert dying_cli("fewstep.files", "atomic_write_bytes", 3, "before", *args) == -signal.SIGKILL
    assert (out / "run.json").is_file() and not (out / "summary.json").exists()
    results = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".fewstep-lock"}  # noqa: E731
    before = results()
    other = cli(*[a if a != "steps=12" else "steps=6" for a in args])
    assert other.returncode == 2 and other.stderr.startswith("fewstep: error:") and "different run" in other.stderr
    assert "config" in other.stderr and other.stderr.count("\n") == 1
    assert results() == before
    fresh = cli(*[a if a != "steps=12" else "steps=6" for a in args], "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 6


def test_second_writer_fails_at_once_naming_the_holder(random_dlm_dir, tmp_path):
    out = tmp_path / "run"
    args = eval_args(random_dlm_dir, out)
    long = [a if a != "10" else "1000" for a in args]  # still running when the second one starts
    first = FORKS.start(long)
    try:
        deadline = time.monotonic() + 120
        while not (out / "samples.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        second = cli(*[a if a != "steps=12" else "steps=6" for a in args])
        assert time.monotonic() - t0 < 60  # it did not wait for the first run
        assert second.returncode == 2, second.stderr
        assert "in use by another fewstep run" in second.stderr and f"pid {first}" in second.stderr
        assert second.stderr.count("\n") == 1
        assert FORKS.wait(first, 0) is None, "the first run ended before the second one tried"
    finally:
        os.kill(first, signal.SIGKILL)
        FORKS.wait(first)
    rows = jsonl(out / "samples.jsonl")
    assert len({r["id"] for r in rows}) == len(rows)
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 12


def test_limit_means_that_many_rows(random_dlm_dir, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    assert cli(*eval_args(random_dlm_dir, out)).returncode == 0
    smaller = cli(*[a if a != "10" else "4" for a in eval_args(random_dlm_dir, out)])
    assert smaller.returncode == 0, smaller.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and "on 4 |" in smaller.stdout
    assert summary["correct"] == sum(r[2] for r in eval_rows(ref)[:4])
    assert eval_rows(out) == eval_rows(ref)[:4]  # samples.jsonl too: exactly the 4 rows


def test_old_eval_directory_resumes(random_dlm_dir, reference, tmp_path):
    """A directory written before run.json and the checksums existed (summary.json with the old header
    fields) resumes; rows already there are kept, not decoded again."""
    ref, _ = reference
    out = tmp_path / "old"
    out.mkdir()
    old_summary = json.loads((ref / "summary.json").read_text())
    for key in ("data_sha256", "model_sha256"):
        del old_summary[key]
    (out / "summary.json").write_text(json.dumps(old_summary))
    kept = [{**r, "output": "kept"} for r in jsonl(ref / "samples.jsonl")[:4]]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    done = cli(*eval_args(random_dlm_dir, out))
    assert done.returncode == 0, done.stderr
    rows = eval_rows(out)
    assert [r[1] for r in rows[:4]] == ["kept"] * 4 and rows[4:] == eval_rows(ref)[4:]
    assert (out / "run.json").is_file()


# --- bench -------------------------------------------------------------------------------------------------


def bench_args(model: Path, out: Path) -> list[str]:
    return ["bench", "--task", "arith", "--model", str(model), "--strategies", "llada;threshold:threshold=0.5",
            "--limit", "6", "--batch-size", "2", "--repeats", "2", "--set", "steps=12", "--no-progress",
            "--out", str(out)]


def bench_rows(out: Path) -> dict[str, list[tuple]]:
    return {d.name: [(r["id"], r["output"], r["nfe"]) for r in jsonl(d / "samples.jsonl")]
            for d in sorted(out.iterdir()) if (d / "samples.jsonl").is_file()}


@pytest.mark.slow
def test_bench_killed_at_random_moments(random_dlm_dir, tmp_path):
    ref = tmp_path / "reference"
    real = real_cli(*bench_args(random_dlm_dir, ref))
    assert real.returncode == 0, real.stderr[-2000:]
    seconds = timed(bench_args(random_dlm_dir, tmp_path / "forked"))
    assert bench_rows(tmp_path / "forked") == bench_rows(ref)
    rng = random.Random(7)
    for trial in range(2):
        out = tmp_path / f"t{trial}"
        kill_then_finish(bench_args(random_dlm_dir, out), rng, seconds, kills=3)
        assert bench_rows(out) == bench_rows(ref)
        units = [(t["label"], t["repeat"], t["batch"]) for t in jsonl(out / "timing.jsonl")]
        assert len(units) == len(set(units)) == 2 * 3 * 2
        assert json.loads((out / "bench.json").read_text())["results"][0]["n"] == 6


def test_bench_killed_between_row_and_timing_keeps_rows_once(random_dlm_dir, tmp_path):
    """The case that duplicated rows: samples appended, timing not yet; the rerun decodes that unit again."""
    out = tmp_path / "run"
    args = bench_args(random_dlm_dir, out)
    code = dying_cli("fewstep.files", "append_jsonl", 4, "before", *args)
    assert code == -signal.SIGKILL
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    for rows in bench_rows(out).values():
        assert [r[0] for r in rows] == [str(i) for i in range(6)]


# --- train -------------------------------------------------------------------------------------------------

TRAIN = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--mlp-hidden", "64", "--batch-size", "8",
         "--save-every", "2", "--snapshot-every", "3", "--log-every", "1", "--warmup", "2", "--steps", "6",
         "--no-progress"]


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--kind", "dlm", *TRAIN, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run in a fresh interpreter, and how long the same run takes forked (equal to it)."""
    root = tmp_path_factory.mktemp("train")
    real = real_cli(*train_args(root / "reference"))
    assert real.returncode == 0, real.stderr[-2000:]
    seconds = timed(train_args(root / "forked"))
    assert_same_model(root / "forked", root / "reference")
    return root / "reference", seconds


def assert_same_model(out: Path, ref: Path) -> None:
    import fewstep

    a, b = load_file(out / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fewstep.load_model(out / "final")
    steps = [r["step"] for r in jsonl(out / "train_log.jsonl")]
    assert steps == list(range(1, 7)), "each step logged once"


@pytest.mark.slow
def test_train_killed_at_random_moments(trained, tmp_path):
    ref, seconds = trained
    rng = random.Random(5)
    for trial in range(2):
        out = tmp_path / f"t{trial}"
        kill_then_finish(train_args(out), rng, seconds, kills=3)
        assert_same_model(out, ref)


@pytest.mark.parametrize("module,attr,nth", [
    ("torch", "save", 2),                          # the second checkpoint, half written
    ("fewstep.training.lab", "save_dlm", 1),         # the step-3 snapshot, half written
    ("fewstep.training.lab", "save_dlm", 3),         # the final model, half written
])
def test_train_killed_while_saving(trained, tmp_path, module, attr, nth):
    ref, _ = trained
    out = tmp_path / "run"
    assert dying_cli(module, attr, nth, "half", *train_args(out)) == -signal.SIGKILL
    done = cli(*train_args(out))
    assert done.returncode == 0, done.stderr
    assert_same_model(out, ref)
    for snap in (out / "snapshots").iterdir():
        load_file(snap / "model.safetensors")


def test_export_replaces_the_destination_only_when_complete(trained, tmp_path):
    ref, _ = trained
    dest = tmp_path / "exported"
    done = cli(*train_args(ref, "--export", str(dest)))
    assert done.returncode == 0, done.stderr
    first = (dest / "model.safetensors").read_bytes()
    (dest / "marker").write_text("previous export")
    # Killed while copying: the destination still holds the previous export, whole.
    assert dying_cli("shutil", "copytree", 1, "before", *train_args(ref, "--export", str(dest))) == -signal.SIGKILL
    assert (dest / "marker").is_file() and (dest / "model.safetensors").read_bytes() == first
    done = cli(*train_args(ref, "--export", str(dest)))
    assert done.returncode == 0 and not (dest / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # the killed copy's leftovers are removed


@pytest.mark.parametrize("where", [".", "final", ".."])
def test_export_into_the_run_is_refused(trained, where):
    ref, _ = trained
    before = sorted(p.relative_to(ref) for p in ref.rglob("*"))
    done = cli(*train_args(ref, "--export", str(ref / where)))
    assert done.returncode == 2 and "run directory" in done.stderr and done.stderr.count("\n") == 1
    assert sorted(p.relative_to(ref) for p in ref.rglob("*")) == before
