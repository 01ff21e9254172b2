"""transformers' Auto classes open fewstep's model directories after ``fewstep.register_auto_classes()``
(no remote code), with fewstep's logits; tiny-ar's tokenizer pads on the left so batched
``generate()`` answers as one prompt at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fewstep


@pytest.fixture(scope="module")
def auto():
    import transformers

    fewstep.register_auto_classes()
    fewstep.register_auto_classes()  # idempotent
    return transformers


def _prompt_ids(model) -> torch.Tensor:
    return torch.tensor([model.encode_prompt("Mia has 7 pens . She buys 5 more . How many pens does Mia have ?")])


@pytest.mark.parametrize("name", ["tiny-dlm", "random-dlm", "random-dream"])
def test_auto_model_logits_are_fewsteps(auto, name, request, tmp_path, bundled):
    if name == "tiny-dlm":
        path = bundled("tiny-dlm")
    elif name == "random-dlm":
        path = request.getfixturevalue("random_dlm_dir")
    else:
        from test_dream import make_random_dream

        path = make_random_dream(tmp_path / "dream")
    config = auto.AutoConfig.from_pretrained(path, trust_remote_code=False)
    assert type(config).__module__ == "fewstep.models.hf"
    ours = fewstep.load_model(path)
    ids = _prompt_ids(ours)
    with torch.no_grad():
        expected = ours.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        for cls in (auto.AutoModel, auto.AutoModelForMaskedLM):
            module = cls.from_pretrained(path, trust_remote_code=False).eval()
            torch.testing.assert_close(module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, expected,
                                       atol=0, rtol=0)
    tok = auto.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    assert tok.encode("Mia has 7 pens .") == ours.tokenizer.encode("Mia has 7 pens .")
    assert tok.mask_token_id == ours.mask_id


def test_a_model_saved_through_transformers_loads_in_fewstep(auto, random_dlm_dir, tmp_path):
    module = auto.AutoModelForMaskedLM.from_pretrained(random_dlm_dir).eval()
    module.save_pretrained(tmp_path / "saved")
    auto.AutoTokenizer.from_pretrained(random_dlm_dir).save_pretrained(tmp_path / "saved")
    reloaded = fewstep.load_model(tmp_path / "saved")
    ids = _prompt_ids(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module(input_ids=ids).logits, module(input_ids=ids).logits, atol=0, rtol=0)


def test_tiny_ar_batched_generate_equals_one_by_one(auto, bundled):
    path = bundled("tiny-ar")
    tok = auto.AutoTokenizer.from_pretrained(path)
    model = auto.AutoModelForCausalLM.from_pretrained(path).eval()
    assert tok.padding_side == "left"
    questions = ["Mia has 7 pens . She buys 5 more . How many pens does Mia have ?", "1 + 2 =",
                 "Tom has 12 apples and eats 3 . How many are left ?"]

    def answers(batch: list[str]) -> list[list[int]]:
        enc = tok(batch, return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        return [row[enc.input_ids.shape[1]:].tolist() for row in out]

    alone = [answers([q])[0] for q in questions]
    batched = answers(questions)
    strip = [[t for t in a if t != tok.pad_token_id] for a in alone]
    assert [[t for t in b if t != tok.pad_token_id] for b in batched] == strip
    assert len({tuple(a) for a in strip}) > 1


def test_registration_is_lazy():
    """``import fewstep`` loads neither torch nor transformers; the registration function is there."""
    code = ("import sys, fewstep; assert 'register_auto_classes' in fewstep.__all__; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
