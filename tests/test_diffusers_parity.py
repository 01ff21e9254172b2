"""``block_threshold`` against diffusers' ``LLaDA2Pipeline`` + ``BlockRefinementScheduler`` (a second,
independent implementation of LLaDA 2's block decoding), token for token on tiny random LLaDA 2
weights in the published layout (tests/test_llada2.py).

The two agree where their rules coincide, and the test sets them up there: the prompt fills whole
attention blocks (diffusers decodes blocks aligned to the sequence start, fewstep from the generation
start), ``steps`` equals the block length (diffusers' per-step minimum is then one token, fewstep's
``minimal_topk=1``), greedy, no token editing (diffusers edits after a block's last mask too,
fewstep only while the block holds one) and no early stop (diffusers leaves the positions after a
finished row's EOS masked, fewstep fills them with EOS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import fewstep
from fewstep.tasks import arith
from fewstep.training import tokenizers
from test_llada2 import CONFIG, published_weights

diffusers = pytest.importorskip("diffusers", reason="diffusers (a test-only reference) is not installed")
if not hasattr(diffusers, "LLaDA2Pipeline") or not hasattr(diffusers, "BlockRefinementScheduler"):
    pytest.skip(f"diffusers {diffusers.__version__} has no LLaDA2Pipeline / BlockRefinementScheduler",
                allow_module_level=True)

BLOCK = CONFIG["attention_block_length"]  # 4


@pytest.fixture(scope="module")
def llada2(tmp_path_factory):
    path: Path = tmp_path_factory.mktemp("llada2") / "tiny-llada2"
    path.mkdir()
    tok = tokenizers.word_level(arith.vocabulary())
    cfg = {**CONFIG, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(published_weights(cfg, len(tok), seed=3), path / "model.safetensors")
    tok.save_pretrained(path)
    return fewstep.load_model(path)


class _Denoiser(torch.nn.Module):
    """fewstep's LLaDA 2 module as the pipeline calls a model: ``model(ids, attention_mask=,
    position_ids=).logits`` (fewstep derives the same positions from the all-ones mask)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def device(self) -> torch.device:  # diffusers asks its components where they are
        return next(self.inner.parameters()).device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def _prompts(model, n: int) -> list[list[int]]:
    """Encoded arith questions cut to whole attention blocks."""
    out = []
    for p in arith.test_set()[:n]:
        ids = model.encode_prompt(p.question)
        out.append(ids[: len(ids) - len(ids) % BLOCK])
    return out


def _diffusers(model, prompt: list[int], gen_length: int, threshold: float) -> list[int]:
    pipe = diffusers.LLaDA2Pipeline(model=_Denoiser(model.module), scheduler=diffusers.BlockRefinementScheduler(),
                                    tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=torch.tensor([prompt]), gen_length=gen_length, block_length=BLOCK, num_inference_steps=BLOCK,
               temperature=0.0, sampling_method="greedy", threshold=threshold, editing_threshold=None,
               minimal_topk=1, eos_early_stop=False, mask_token_id=model.mask_id, eos_token_id=model.eos_id,
               output_type="seq")
    return out.sequences[0].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [0.9, 0.3, 0.1])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_block_threshold_matches_diffusers_token_for_token(llada2, threshold, cache):
    gen_length = 16
    prompts = _prompts(llada2, 6)
    cfg = fewstep.DecodeConfig(strategy="block_threshold", threshold=threshold, minimal_topk=1, gen_length=gen_length,
                               block_length=BLOCK, cache=cache)
    ours = fewstep.generate(llada2, prompts, cfg)
    theirs = [_diffusers(llada2, p, gen_length, threshold) for p in prompts]
    assert [r.token_ids for r in ours] == theirs
    assert all(llada2.mask_id not in t for t in theirs)
    if threshold < 0.5:  # the threshold commits several tokens in some steps: fewer forwards than tokens
        assert min(r.nfe for r in ours) < gen_length
