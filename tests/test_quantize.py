"""``--quantize``: weight-only int8 on the CPU (torchao), nf4 / int4 refused off CUDA, the quantization
recorded in result identities and applied to drafters. GPU checks run only where CUDA is present."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fewstep
from fewstep.cli import main
from fewstep.errors import ResultsError
from fewstep.tasks import arith

pytest.importorskip("torchao", reason="--quantize needs torchao (the quant extra)")

from fewstep.models.quantize import QuantizationError, quantization_of, weight_bytes  # noqa: E402

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def int8_dlm(bundled):
    return fewstep.load_model(bundled("tiny-dlm"), quantize="int8")


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]


def test_int8_quantizes_every_linear_layer_but_the_output_head(int8_dlm):
    assert quantization_of(int8_dlm) == "int8"
    kinds = {type(lin.weight).__name__ for lin in _linears(int8_dlm)}
    assert "Int8Tensor" in kinds
    vocab = int8_dlm.embedding_table().shape[0]
    for lin in _linears(int8_dlm):
        assert (type(lin.weight) is torch.nn.Parameter) == (lin.out_features == vocab)
    assert int8_dlm.embedding_table().dtype == torch.float32  # embedding priors read the table as before


def test_int8_decodes_like_float32_on_most_problems(int8_dlm, tiny_dlm):
    problems = arith.test_set()[:40]
    cfg = fewstep.DecodeConfig(strategy="threshold")
    full = fewstep.generate(tiny_dlm, [p.question for p in problems], cfg)
    quant = fewstep.generate(int8_dlm, [p.question for p in problems], cfg)
    same = sum(a.text == b.text for a, b in zip(full, quant))
    assert same >= 0.8 * len(problems), f"only {same} of {len(problems)} answers match float32"
    assert all(int8_dlm.mask_id not in r.token_ids for r in quant)
    # the weights take about a quarter of the memory (embeddings and the output head stay float32)
    assert weight_bytes(int8_dlm.module) < 0.4 * weight_bytes(tiny_dlm.module)


@pytest.mark.parametrize("method", ["nf4", "int4"])
def test_four_bit_is_refused_off_cuda_in_one_line(method, capsys, bundled):
    with pytest.raises(QuantizationError, match=f"--quantize {method} runs on CUDA devices only"):
        fewstep.load_model(bundled("tiny-dlm"), device="cpu", quantize=method)
    assert main(["generate", "1 + 2", "--model", "tiny-dlm", "--quantize", method]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fewstep: error: --quantize ") and "int8" in err


def test_unknown_or_weightless_quantization_is_refused(capsys, bundled):
    with pytest.raises(QuantizationError, match="unknown quantization 'int3'"):
        fewstep.load_model(bundled("tiny-dlm"), quantize="int3")
    with pytest.raises(QuantizationError, match="no weights to quantize"):
        fewstep.load_model("gold", quantize="int8")
    assert main(["generate", "1 + 2", "--quantize", "fp8"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_drafter_is_quantized_like_the_model(int8_dlm):
    from fewstep.drafting.drafter import _LOADED

    problems = [p.question for p in arith.test_set()[:6]]
    cfg = fewstep.DecodeConfig(strategy="threshold", drafter="tiny-ar", init="inject")
    rs = fewstep.generate(int8_dlm, problems, cfg)
    assert all(r.drafter_nfe > 0 and int8_dlm.mask_id not in r.token_ids for r in rs)
    drafter = _LOADED[("tiny-ar", "cpu", "None", "int8")]
    assert quantization_of(drafter) == "int8"
    assert any(type(lin.weight).__name__ == "Int8Tensor" for lin in _linears(drafter))


def test_eval_records_the_quantization_and_never_mixes_results(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["eval", "--task", "arith", "--model", "tiny-dlm", "--strategy", "threshold", "--limit", "4",
            "--batch-size", "4", "--out", out, "--no-progress"]
    assert main([*args, "--quantize", "int8"]) == 0
    assert "tiny-dlm (int8) threshold" in capsys.readouterr().out
    for name in ("run.json", "summary.json"):
        assert json.loads((tmp_path / "run" / name).read_text())["quantize"] == "int8"
    assert main(args) == 2  # float32 into the int8 run's directory: refused
    assert "quantize" in capsys.readouterr().err
    from fewstep.evaluation.runner import EvalRequest, run_eval

    with pytest.raises(ResultsError, match="quantize"):
        run_eval(EvalRequest(task="arith", model="tiny-dlm", out=out, strategy="threshold", limit=4, batch_size=4),
                 progress=False)


def test_bench_records_the_quantization(tmp_path):
    from fewstep.evaluation.bench import BenchRequest, run_bench

    req = BenchRequest(task="arith", model="tiny-dlm", strategies=("threshold",), out=str(tmp_path), limit=4,
                       batch_size=4, repeats=1, quantize="int8")
    result = run_bench(req, progress=False)
    assert result["quantize"] == "int8"
    assert json.loads((tmp_path / "bench_plan.json").read_text())["quantize"] == "int8"
    assert "tiny-dlm (int8)" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_the_command_line_stays_quiet():
    """torchao's warnings about optional kernels this machine lacks never reach the user."""
    out = subprocess.run([sys.executable, "-m", "fewstep.cli", "generate", "--quantize", "int8", "--stats",
                          arith.test_set()[0].question], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("nfe=") and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.skipif(not CUDA, reason="nf4 and int4 run on CUDA only (no CUDA device here)")
@pytest.mark.parametrize("method", ["int8", "nf4", "int4"])
def test_cuda_quantization_decodes_close_to_bfloat16(method, bundled):
    full = fewstep.load_model(bundled("tiny-dlm"), device="cuda", dtype="bfloat16")
    quant = fewstep.load_model(bundled("tiny-dlm"), device="cuda", dtype="bfloat16", quantize=method)
    assert quantization_of(quant) == method and quant.device.type == "cuda"
    problems = [p.question for p in arith.test_set()[:40]]
    cfg = fewstep.DecodeConfig(strategy="threshold")
    same = sum(a.text == b.text for a, b in zip(fewstep.generate(full, problems, cfg),
                                                 fewstep.generate(quant, problems, cfg)))
    assert same >= 0.6 * len(problems), f"{method}: only {same} of {len(problems)} answers match bfloat16"
    assert weight_bytes(quant.module) < weight_bytes(full.module)
