"""The bundled tiny-dlm-edit: a fine-tune of tiny-dlm that judges visible draft tokens, stored in
bfloat16, carrying its recommended warm-start settings (chosen on arith-val), which ``--drafter``
alone applies."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fewstep.config import WARM_START, resolve_config


@pytest.fixture(scope="module")
def edit_model(bundled):
    import fewstep

    return fewstep.load_model(bundled("tiny-dlm-edit"))


def test_it_is_a_bfloat16_fine_tune_of_tiny_dlm(bundled, edit_model, tiny_dlm):
    weights = load_file(bundled("tiny-dlm-edit") / "model.safetensors")
    teacher = load_file(bundled("tiny-dlm") / "model.safetensors")
    assert weights.keys() == teacher.keys() and all(v.dtype == torch.bfloat16 for v in weights.values())
    assert any(not torch.equal(weights[k].float(), teacher[k].bfloat16().float()) for k in weights)
    assert edit_model.kind == "diffusion"
    assert {k: v for k, v in edit_model.decode_defaults.items() if k != "warm_start"} == tiny_dlm.decode_defaults


def test_a_drafter_alone_takes_the_recommended_warm_start(bundled, edit_model):
    recommended = json.loads((bundled("tiny-dlm-edit") / "generation_config.json").read_text())["warm_start"]
    assert recommended and set(recommended) <= set(WARM_START)
    cfg = resolve_config(edit_model, "threshold", ["drafter=tiny-ar"])
    assert all(getattr(cfg, k) == v for k, v in recommended.items())
    explicit = resolve_config(edit_model, "threshold", ["drafter=tiny-ar", "remask_threshold=0.2"])
    assert explicit.remask_threshold == 0.2 and explicit.init == "inject"
    assert resolve_config(edit_model, "threshold", []).init == "mask"  # no drafter: no warm start


@pytest.mark.slow
def test_alone_it_keeps_tiny_dlm_s_accuracy_and_it_judges_drafts(edit_model, tiny_ar):
    """First 200 test problems (the full set: 89.3% against tiny-dlm's 90.0%, AUROC 0.952)."""
    from fewstep.config import DecodeConfig
    from fewstep.drafting.drafter import load_drafter
    from fewstep.engine import generate
    from fewstep.evaluation.calibration import auroc, draft_canvas, judge, reference_tokens
    from fewstep.tasks.base import get_task

    task = get_task("arith")
    examples = task.examples()[:200]
    cfg = DecodeConfig(strategy="threshold", threshold=0.9)
    results = generate(edit_model, [e.prompt for e in examples], cfg)
    accuracy = sum(task.score(e, r.text).correct for e, r in zip(examples, results)) / len(examples)
    assert accuracy >= 0.86
    canvas = draft_canvas(edit_model, load_drafter("tiny-ar"), [e.prompt for e in examples], 24)
    p = judge(edit_model, [e.prompt for e in examples], canvas.tokens)
    ref = torch.tensor([reference_tokens(edit_model.tokenizer, e.gold_output, 24, edit_model.eos_id) for e in examples])
    shown = canvas.tokens >= 0
    assert auroc(p[shown].tolist(), (canvas.tokens == ref)[shown].tolist()) >= 0.9
