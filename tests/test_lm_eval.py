"""The lm-eval model ``fewstep``: a local generate_until task through lm-eval's Python API, and the
Monte-Carlo loglikelihood."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'fewstep[lmeval]')")

TASK_YAML = """\
task: fewstep_tiny_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["####"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No network for datasets / the hub, and a private datasets cache (read when datasets is imported)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
        yield


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A YAML task over a local JSONL file of four arith questions."""
    from fewstep.tasks import arith

    root = tmp_path_factory.mktemp("lm-eval-tasks")
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": str(p.answer)}) + "\n"
                            for p in arith.test_set()[:4]))
    (root / "fewstep_tiny_arith.yaml").write_text(TASK_YAML.format(data=data))
    return root


def test_importing_fewstep_does_not_import_lm_eval():
    code = ("import sys, fewstep, fewstep.integrations, fewstep.evaluation.runner, fewstep.cli; "
            "assert 'lm_eval' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_generate_until_task_through_simple_evaluate(offline, task_dir, random_dlm_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import fewstep.integrations.lm_eval  # noqa: F401  (registers the model)

    results = lm_eval.simple_evaluate(
        model="fewstep",
        model_args=f"pretrained={random_dlm_dir},steps=12",
        tasks=["fewstep_tiny_arith"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=2,
        apply_chat_template=True,
    )
    metrics = results["results"]["fewstep_tiny_arith"]
    samples = results["samples"]["fewstep_tiny_arith"]
    assert len(samples) == 4
    assert samples[0]["arguments"][0][0].startswith("<bos>Q: ")  # the lab chat template was applied
    assert all(isinstance(s["resps"][0][0], str) and "####" not in s["resps"][0][0] for s in samples)
    matches = [float(s["filtered_resps"][0] == s["target"]) for s in samples]
    assert [s["exact_match"] for s in samples] == matches
    assert metrics["exact_match,none"] == sum(matches) / 4


@pytest.fixture(scope="module")
def lm(random_dlm_dir):
    from lm_eval.api.registry import get_model

    import fewstep.integrations.lm_eval  # noqa: F401

    return get_model("fewstep").create_from_arg_string(f"pretrained={random_dlm_dir},steps=12,mc_num=8",
                                                       {"batch_size": 4})


def _requests(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_is_a_deterministic_negative_estimate(lm):
    requests = _requests("loglikelihood", [
        ("Mia has 7 pens . She buys 5 more . How many pens does Mia have ?", " 12"),
        ("Tom has 9 eggs .", " He eats 2 . How many eggs are left ?"),
    ])
    first = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(first) == 2
    for value, greedy in first:
        assert math.isfinite(value) and value < 0 and isinstance(greedy, bool)
    assert first[1][0] < first[0][0]  # ten tokens cost more than one
    assert lm.loglikelihood(requests, disable_tqdm=True) == first


def test_single_token_estimate_is_exact(lm):
    """With one continuation token every sample masks it alone: the estimate is its log-probability."""
    import torch

    from fewstep.integrations.lm_eval import mc_loglikelihood

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


def test_bad_model_args_are_clear(random_dlm_dir):
    from fewstep.errors import ConfigError
    from fewstep.integrations.lm_eval import FewstepLM

    with pytest.raises(ConfigError, match="unknown fewstep model_args"):
        FewstepLM(pretrained=str(random_dlm_dir), colour="red")
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        FewstepLM(pretrained=str(random_dlm_dir)).loglikelihood_rolling([])


@pytest.mark.slow
def test_command_line_wrapper(offline, task_dir, random_dlm_dir, tmp_path):
    """``python -m fewstep.integrations.lm_eval`` is lm-eval's command line with the model registered."""
    proc = subprocess.run(
        [sys.executable, "-m", "fewstep.integrations.lm_eval", "--model", "fewstep",
         "--model_args", f"pretrained={random_dlm_dir},steps=12", "--tasks", "fewstep_tiny_arith",
         "--include_path", str(task_dir), "--apply_chat_template", "--batch_size", "4", "--device", "cpu",
         "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fewstep_tiny_arith" in proc.stdout and "exact_match" in proc.stdout
    [result] = tmp_path.glob("*/results_*.json")
    assert "exact_match,none" in json.loads(result.read_text())["results"]["fewstep_tiny_arith"]
