"""The lm-eval model ``fewstep``: local YAML tasks through lm-eval's own command line (generation and
loglikelihood, equal to fewstep's own results), chat templates, few-shot turns, the system instruction,
the token-boundary split, the Monte-Carlo estimate and the model information lm-eval records."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'fewstep[lmeval]')")

N_PROBLEMS = 8
COMMON = """\
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
doc_to_text: "{{{{question}}}}"
"""
GEN_YAML = "task: fewstep_arith_gen\n" + COMMON + """\
output_type: generate_until
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<never>"]
filter_list:
  - name: final
    filter:
      - function: regex
        regex_pattern: "#### (\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
MC_YAML = "task: fewstep_arith_mc\n" + COMMON + """\
output_type: multiple_choice
doc_to_choice: "{{{{[solution, wrong]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No network for datasets / the hub, and a private datasets cache (read when datasets is imported)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _offline_env(tmp_path_factory.mktemp("hf-datasets")).items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two YAML tasks over the first arith test problems: generation (the answer after ``####``) and
    multiple choice between the reference solution and one with a wrong final answer."""
    from fewstep.tasks import arith

    root = tmp_path_factory.mktemp("lm-eval-tasks")
    rows = []
    for p in arith.test_set()[:N_PROBLEMS]:
        head = p.solution.rpartition("####")[0]
        rows.append({"question": p.question, "answer": str(p.answer), "solution": p.solution,
                     "wrong": f"{head}#### {p.answer + 1}"})
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "gen.yaml").write_text(GEN_YAML.format(data=data))
    (root / "mc.yaml").write_text(MC_YAML.format(data=data))
    return root


def _samples(out: Path, task: str) -> list[dict]:
    [path] = out.glob(f"*/samples_{task}_*.jsonl")
    return sorted((json.loads(x) for x in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_importing_fewstep_does_not_import_lm_eval():
    code = ("import sys, fewstep, fewstep.integrations, fewstep.evaluation.runner, fewstep.cli; "
            "assert 'lm_eval' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_shell_command_equals_fewstep_eval(task_dir, tmp_path, tiny_dlm):
    """``fewstep lm-eval`` (lm-eval's own entry point) on the local YAML tasks: the generations equal
    ``fewstep eval``'s on the same problems, and the loglikelihoods equal fewstep's estimator."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fewstep.cli", "lm-eval", "--model", "fewstep",
         "--model_args", "pretrained=tiny-dlm,strategy=threshold,threshold=0.9,mc_num=8",
         "--tasks", "fewstep_arith_gen,fewstep_arith_mc", "--include_path", str(task_dir), "--apply_chat_template",
         "--batch_size", "8", "--device", "cpu", "--log_samples", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, env=_offline_env(tmp_path / "cache"), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = out.glob("*/results_*.json")
    results = json.loads(results_file.read_text())

    # generation: the same outputs and accuracy as fewstep eval on the same problems
    from fewstep.evaluation.runner import EvalRequest, run_eval

    summary = run_eval(EvalRequest(task="arith", model="tiny-dlm", out=str(tmp_path / "eval"), strategy="threshold",
                                   settings=("threshold=0.9",), limit=N_PROBLEMS, batch_size=8), progress=False)
    ours = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    gen = _samples(out, "fewstep_arith_gen")
    assert [s["resps"][0][0] for s in gen] == [r["output"] for r in sorted(ours, key=lambda r: int(r["id"]))]
    assert results["results"]["fewstep_arith_gen"]["exact_match,final"] == pytest.approx(summary["accuracy"])
    info = results["config"]
    assert info["nfe"]["generate_until"]["forwards_per_request"] == pytest.approx(summary["nfe_mean"])

    # loglikelihood: every value equals fewstep's estimator on the same tokens
    from fewstep.decoding.likelihood import mc_loglikelihood, scored_region

    model = tiny_dlm
    mc = _samples(out, "fewstep_arith_mc")
    right = 0
    for s in mc:
        prefix = model.encode_prompt(s["doc"]["question"])
        values = []
        for choice, resp in zip((s["doc"]["solution"], s["doc"]["wrong"]), s["resps"]):
            target = model.tokenizer.encode(choice, add_special_tokens=False)
            region = scored_region(target, model.eos_id, 24, "eos")
            values.append(mc_loglikelihood(model, prefix, region, mc_num=8, batch_size=8, seed=0))
            assert float(resp[0][0]) == pytest.approx(values[-1], rel=1e-9, abs=1e-12)
        right += values[0] > values[1]
    assert results["results"]["fewstep_arith_mc"]["acc,none"] == pytest.approx(right / N_PROBLEMS)
    assert right == N_PROBLEMS  # tiny-dlm prefers its right answers to ones with a wrong final number
    assert info["decode_config"]["threshold"] == 0.9 and info["loglikelihood_estimator"]["mc_num"] == 8
    assert info["nfe"]["loglikelihood"]["forwards_per_request"] == 9  # mc_num samples + the greedy check


@pytest.fixture(scope="module")
def lm(random_dlm_dir):
    from lm_eval.api.registry import get_model

    import fewstep.integrations.lm_eval  # noqa: F401

    return get_model("fewstep").create_from_arg_string(f"pretrained={random_dlm_dir},steps=12,mc_num=8",
                                                       {"batch_size": 4})


def _requests(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.mark.slow
def test_fewshot_turns_and_system_instruction_reach_the_model(offline, task_dir, bundled):
    """The lab template renders only the last user message: lm-eval's few-shot turns and system
    instruction are folded into it rather than dropped."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import fewstep.integrations.lm_eval  # noqa: F401

    results = lm_eval.simple_evaluate(
        model="fewstep", model_args=f"pretrained={bundled('tiny-dlm')}", tasks=["fewstep_arith_gen"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), batch_size=2, limit=2,
        num_fewshot=2, system_instruction="Answer in words .", apply_chat_template=True, fewshot_as_multiturn=True,
    )
    for sample in results["samples"]["fewstep_arith_gen"]:
        prompt = sample["arguments"][0][0]
        assert prompt.startswith("<bos>Q: Answer in words .") and prompt.endswith(f"{sample['doc']['question']} A:")
        assert prompt.count("?") == 3  # two shot questions and the question itself
        assert prompt.count("####") == 0  # the shots' answers are the bare numbers of the 'answer' field


def test_fold_keeps_every_message_in_order():
    from fewstep.integrations.lm_eval import fold_messages

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert fold_messages(messages) == [{"role": "user", "content": "S\n\nq1 a1\n\nq2"}]
    prefill = [*messages, {"role": "assistant", "content": "The answer is"}]
    assert fold_messages(prefill)[-1] == {"role": "assistant", "content": "The answer is"}


def test_single_message_renders_as_fewstep_prompts_it(lm):
    text = lm.apply_chat_template([{"role": "user", "content": "Mia has 7 pens ."}])
    assert lm.encode(text) == lm.model.encode_prompt("Mia has 7 pens .")


def test_chat_template_asked_of_a_model_without_one_is_an_error(random_dlm_dir, tmp_path):
    from fewstep.errors import ConfigError
    from fewstep.integrations.lm_eval import FewstepLM

    plain = tmp_path / "no-template"
    shutil.copytree(random_dlm_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    lm = FewstepLM(pretrained=str(plain))
    assert lm.chat_template(False) is None
    with pytest.raises(ConfigError, match="no chat template"):
        lm.chat_template(True)
    with pytest.raises(ConfigError, match="no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_chat_template_error_from_the_command_line(offline, task_dir, random_dlm_dir, tmp_path, capsys):
    from fewstep.cli import main

    plain = tmp_path / "no-template"
    shutil.copytree(random_dlm_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    status = main(["lm-eval", "--model", "fewstep", "--model_args", f"pretrained={plain}", "--tasks",
                   "fewstep_arith_gen", "--include_path", str(task_dir), "--apply_chat_template", "--limit", "1",
                   "--device", "cpu"])
    assert status == 2
    assert "fewstep: error:" in capsys.readouterr().err


def test_continuation_split_on_a_token_boundary(lm):
    """Under a chat template lm-eval joins ``A:`` and ``5`` with no space: one unknown word for a
    word-level tokenizer. The continuation is then tokenised on its own."""
    tok = lm.model.tokenizer
    context = lm.apply_chat_template([{"role": "user", "content": "Mia has 7 pens ."}])
    prefix, target = lm.encode_pair(context, "5 + 7 = 12")
    assert prefix == lm.encode(context)
    assert target == tok.encode("5 + 7 = 12", add_special_tokens=False)
    assert tok.unk_token_id not in target
    assert lm.encode_pair("Q: Mia has 7 pens . A:", " 12") == lm.encode_pair("Q: Mia has 7 pens . A: ", "12")


def test_loglikelihood_is_a_deterministic_negative_estimate(lm):
    requests = _requests("loglikelihood", [
        ("Mia has 7 pens . She buys 5 more . How many pens does Mia have ?", " 12"),
        ("Tom has 9 eggs .", " He eats 2 . How many eggs are left ?"),
    ])
    first = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(first) == 2
    for value, greedy in first:
        assert math.isfinite(value) and value < 0 and isinstance(greedy, bool)
    assert lm.loglikelihood(requests, disable_tqdm=True) == first


def test_scored_region_pads_with_eos_as_in_training():
    from fewstep.decoding.likelihood import scored_region

    assert scored_region([7, 8], eos_id=2, gen_length=5, padding="eos") == [7, 8, 2, 2, 2]
    assert scored_region([7, 8], eos_id=2, gen_length=5, padding="none") == [7, 8]
    assert scored_region([7] * 6, eos_id=2, gen_length=5, padding="eos") == [7] * 6


def test_single_token_estimate_is_exact(lm):
    """With one scored token every sample masks it alone: the estimate is its log-probability."""
    import torch

    from fewstep.decoding.likelihood import mc_loglikelihood

    prefix, target = lm.encode_pair("Mia has 7 pens .", " 7")
    assert len(target) == 1
    ids = torch.tensor([prefix + [lm.model.mask_id]])
    exact = torch.log_softmax(lm.model.logits(input_ids=ids)[0, -1].double(), -1)[target[0]].item()
    assert mc_loglikelihood(lm.model, prefix, target, mc_num=3, batch_size=2) == pytest.approx(exact, abs=1e-5)


def test_generate_until_cuts_at_stop_strings(lm):
    from fewstep.integrations.lm_eval import cut_at

    assert cut_at("7 + 5 = 12 . #### 12", ["####", "="]) == "7 + 5 "
    assert cut_at("no stop here", ["####"]) == "no stop here"
    from fewstep.tasks import arith

    prompt = f"<bos>Q: {arith.test_set()[0].question} A:"
    [whole] = lm.generate_until(_requests("generate_until", [(prompt, {"until": ["zzz"]})]), disable_tqdm=True)
    words = whole.split()
    assert len(words) > 2 and "zzz" not in whole
    stop = words[len(words) // 2]  # a stop string that does occur in the output, after its start
    at = whole.index(stop)
    assert 0 < at < len(whole)
    requests = _requests("generate_until", [(prompt, {"until": stop}), (prompt, {"until": ["zzz", stop]})])
    assert lm.generate_until(requests, disable_tqdm=True) == [whole[:at], whole[:at]]


def test_model_info(lm, random_dlm_dir, tmp_path):
    from fewstep.models.checksum import model_checksum

    info = lm.get_model_info()
    assert info["decode_config"] == lm.cfg.to_dict()
    assert info["model_sha256"] == model_checksum(Path(random_dlm_dir)) and len(info["model_sha256"]) == 64
    assert info["model_num_parameters"] == sum(p.numel() for p in lm.model.module.parameters())
    assert info["nfe"]["generate_until"]["forwards_per_request"] > 0  # counted by the requests above
    copy = tmp_path / "copy"
    shutil.copytree(random_dlm_dir, copy)
    assert model_checksum(copy) == info["model_sha256"]
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_checksum(copy) != info["model_sha256"]


def test_eval_and_lm_eval_record_the_same_checksum(lm, random_dlm_dir, tmp_path):
    """The model's SHA-256 is one function: fewstep eval's run.json and lm-eval's model info agree."""
    from fewstep.evaluation.runner import EvalRequest, run_eval

    summary = run_eval(EvalRequest(task="arith", model=str(random_dlm_dir), out=str(tmp_path / "eval"), limit=1,
                                   batch_size=1, settings=("steps=4",)), progress=False)
    recorded = json.loads((tmp_path / "eval" / "run.json").read_text())["model_sha256"]
    assert recorded == summary["model_sha256"] == lm.get_model_info()["model_sha256"]
    assert len(recorded) == 64


def test_bad_model_args_are_clear(random_dlm_dir):
    from fewstep.errors import ConfigError
    from fewstep.integrations.lm_eval import FewstepLM

    with pytest.raises(ConfigError, match="unknown fewstep model_args"):
        FewstepLM(pretrained=str(random_dlm_dir), colour="red")
    with pytest.raises(ConfigError, match="mc_padding"):
        FewstepLM(pretrained=str(random_dlm_dir), mc_padding="zeros")
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        FewstepLM(pretrained=str(random_dlm_dir)).loglikelihood_rolling([])
