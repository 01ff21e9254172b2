"""Block diffusion: block-causal attention in the LLaDA architecture, and decoding with the finished
blocks in the key/value cache, which for a block-causal model is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.models.blockcausal import covering_window
from fewstep.models.kvcache import KVCache
from fewstep.tasks import arith
from fewstep.training import lab


def make_block_causal_dlm(path: Path, block: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model, tok = lab.new_dlm(32, 2, 4, 64, max_len=128, attention_block_length=block)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    lab.save_dlm(model, tok, path)
    return path


@pytest.fixture(scope="module", params=[8, 5])
def bc_model(request, tmp_path_factory):
    path = make_block_causal_dlm(tmp_path_factory.mktemp("bc") / f"bc{request.param}", request.param)
    return fewstep.load_model(path)


def test_attention_is_block_causal_and_padding_free(bc_model):
    module, block = bc_model.module, bc_model.module.config.attention_block_length
    x = torch.randint(3, 100, (1, 4 * block + 3))
    full = module(input_ids=x, attention_mask=torch.ones_like(x)).logits
    later = x.clone()
    later[0, 2 * block:] = bc_model.mask_id  # change everything from the third attention block on
    changed = module(input_ids=later, attention_mask=torch.ones_like(x)).logits
    assert torch.equal(full[0, :2 * block], changed[0, :2 * block])  # earlier blocks see none of it
    assert not torch.allclose(full[0, 2 * block:], changed[0, 2 * block:])
    earlier = x.clone()
    earlier[0, block - 1] = bc_model.mask_id  # a change in the first block reaches every later block
    assert not torch.allclose(full[0, -1], module(input_ids=earlier, attention_mask=torch.ones_like(x)).logits[0, -1])
    padded = torch.cat([torch.zeros((1, 3), dtype=torch.long), x], 1)
    att = torch.cat([torch.zeros((1, 3), dtype=torch.long), torch.ones_like(x)], 1)
    torch.testing.assert_close(module(input_ids=padded, attention_mask=att).logits[:, 3:], full)


def test_window_forward_over_covering_attention_blocks_is_exact(bc_model):
    module, block = bc_model.module, bc_model.module.config.attention_block_length
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 40))
    att = torch.ones_like(ids)
    att[1, :7] = 0  # a ragged pair: the rows' attention blocks sit at different offsets
    full = module(input_ids=ids, attention_mask=att).logits
    active = slice(22, 30)
    cache = KVCache(rows=2)
    stale = ids.clone()
    stale[:, active] = bc_model.mask_id  # the cache was filled before the active block was decoded
    module(input_ids=stale, attention_mask=att, cache=cache)
    win = covering_window(active, att, block)
    assert win.start <= active.start and win.stop >= active.stop
    out = module(input_ids=ids[:, win], attention_mask=att, cache=cache, window=win,
                 logits_positions=slice(active.start - win.start, active.stop - win.start)).logits
    torch.testing.assert_close(out, full[:, active], rtol=1e-5, atol=1e-5)
    if (win.start, win.stop) != (active.start, active.stop):  # the bare block is not enough
        cache2 = KVCache(rows=2)
        module(input_ids=stale, attention_mask=att, cache=cache2)
        bare = module(input_ids=ids[:, active], attention_mask=att, cache=cache2, window=active).logits
        assert not torch.allclose(bare, full[:, active], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy,settings", [("threshold", {"threshold": 0.7}), ("llada", {"steps": 12}),
                                               ("block_threshold", {"threshold": 0.7, "editing_threshold": 0.5}),
                                               ("factor", {"factor": 1.0})])
@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_cached_block_diffusion_equals_uncached(bc_model, strategy, settings, cache):
    prompts = [bc_model.encode_prompt(p.question) for p in arith.test_set()[:12]]
    assert len({len(p) % bc_model.module.config.attention_block_length for p in prompts}) > 1
    block = 8 if bc_model.module.config.attention_block_length == 8 else 4
    base = dict(strategy=strategy, gen_length=24, block_length=block, **settings)
    plain = fewstep.generate(bc_model, prompts, fewstep.DecodeConfig(**base))
    cached = fewstep.generate(bc_model, prompts, fewstep.DecodeConfig(cache=cache, **base))
    assert [(r.token_ids, r.nfe) for r in cached] == [(r.token_ids, r.nfe) for r in plain]
    alone = [fewstep.generate(bc_model, [p], fewstep.DecodeConfig(cache=cache, **base))[0] for p in prompts[:4]]
    assert [(r.token_ids, r.nfe) for r in alone] == [(r.token_ids, r.nfe) for r in plain[:4]]


def test_token_editing_in_the_loop(bc_model):
    prompts = [bc_model.encode_prompt(p.question) for p in arith.test_set()[:12]]
    block = 8 if bc_model.module.config.attention_block_length == 8 else 4
    base = dict(gen_length=24, block_length=block, threshold=0.7)
    plain = fewstep.generate(bc_model, prompts, fewstep.DecodeConfig(strategy="threshold", **base))
    # without editing, LLaDA 2's rule at minimal_topk 1 is Fast-dLLM's threshold (> instead of >=)
    same = fewstep.generate(bc_model, prompts, fewstep.DecodeConfig(strategy="block_threshold", **base))
    assert [(r.token_ids, r.nfe) for r in same] == [(r.token_ids, r.nfe) for r in plain]
    cfg = fewstep.DecodeConfig(strategy="block_threshold", editing_threshold=0.3, max_edits=2, **base)
    from fewstep.decoding.loop import decode

    events = list(decode(bc_model, prompts, cfg))
    edited = 0
    for before, after in zip(events, events[1:]):
        was = before.committed_at >= 0
        edited += int((after.committed & was & (after.canvas != before.canvas)).sum())
    assert edited > 0  # committed tokens were replaced
    final = events[-1]
    assert final.done and not (final.canvas == bc_model.mask_id).any()


def test_decode_block_longer_than_the_attention_block_is_refused(bc_model):
    from fewstep.errors import ConfigError

    size = bc_model.module.config.attention_block_length
    with pytest.raises(ConfigError, match=f"block-causal attention in blocks of {size}"):
        fewstep.generate(bc_model, ["Mia has 7 pens ."], fewstep.DecodeConfig(gen_length=4 * size,
                                                                              block_length=2 * size))


def test_block_causal_models_default_to_the_exact_cache(bc_model, random_dlm_dir):
    from fewstep.config import resolve_config

    assert resolve_config(bc_model, "block_threshold", []).cache == "dual"
    assert resolve_config(bc_model, "llada", ["cache=none"]).cache == "none"  # still an override
    assert resolve_config(fewstep.load_model(random_dlm_dir), "llada", []).cache == "none"  # full attention
