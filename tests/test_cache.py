"""The key/value cache: the model's window forward, the loop's refresh rule, exactness with
``cache_refresh=1``, batch invariance with the cache on, and its bad inputs."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.config import DecodeConfig
from fewstep.decoding.loop import decode
from fewstep.errors import ConfigError
from fewstep.models.kvcache import KVCache
from fewstep.models.llada import LLaDAConfig, LLaDAModel
from fewstep.tasks import arith

STRATEGIES = [("llada", {"steps": 16}), ("threshold", {"threshold": 0.5}), ("cad", {"tau": 0.5}),
              ("factor", {}), ("eb", {})]


def _questions(n: int) -> list[str]:
    return [p.question for p in arith.test_set()[:n]]


def _run(model, prompts, **kw):
    return fewstep.generate(model, prompts, DecodeConfig(gen_length=16, block_length=4, **kw))


@torch.no_grad()
def test_a_window_forward_on_a_fresh_cache_equals_the_full_forward():
    torch.manual_seed(0)
    m = LLaDAModel(LLaDAConfig(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=96, vocab_size=50,
                               embedding_size=50)).eval()
    ids = torch.randint(3, 50, (3, 20))
    att = torch.ones_like(ids)
    att[0, :4] = 0  # a left-padded row
    full = m(ids, att).logits
    cache = KVCache(rows=3)
    assert torch.equal(m(ids, att, cache=cache).logits, full)
    dual = m(ids[:, 8:12], att, cache=cache, window=slice(8, 12)).logits
    prefix = m(ids[:, 8:], att, cache=cache, window=slice(8, 20), logits_positions=slice(0, 4)).logits
    rows = torch.tensor([2, 0])
    some = m(ids[rows, 8:12], att[rows], cache=cache, cache_rows=rows, window=slice(8, 12)).logits
    torch.testing.assert_close(dual, full[:, 8:12], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prefix, full[:, 8:12], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(some, full[rows, 8:12], rtol=1e-5, atol=1e-5)
    # the window forward reads the cache: a changed context outside the window is not seen
    other = ids.clone()
    other[:, :8] = 5
    assert torch.equal(m(other[:, 8:12], att, cache=cache, window=slice(8, 12)).logits, dual)
    assert not torch.allclose(m(other, att).logits[:, 8:12], dual)


@pytest.mark.parametrize("strategy,params", STRATEGIES)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_refresh_every_step_is_exactly_the_uncached_decode(random_dlm_dir, strategy, params, mode):
    model = fewstep.load_model(random_dlm_dir)
    qs = _questions(6)  # prompts of different lengths: a ragged, left-padded batch
    plain = _run(model, qs, strategy=strategy, early_stop=True, **params)
    cached = _run(model, qs, strategy=strategy, early_stop=True, cache=mode, cache_refresh=1, **params)
    assert [(r.token_ids, r.nfe) for r in cached] == [(r.token_ids, r.nfe) for r in plain]


def test_refresh_every_step_with_guidance_and_warm_starts(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    qs = _questions(4)
    for kw in ({"cfg_scale": 1.0}, {"drafter": "tiny-ar", "init": "inject", "remask_threshold": 0.3},
               {"drafter": "tiny-ar", "init": "interpolate"}, {"revise_threshold": 0.5, "verify_groups": 2}):
        plain = _run(model, qs, strategy="threshold", threshold=0.5, **kw)
        cached = _run(model, qs, strategy="threshold", threshold=0.5, cache="dual", cache_refresh=1, **kw)
        assert [r.token_ids for r in cached] == [r.token_ids for r in plain], kw
        approx = _run(model, qs, strategy="threshold", threshold=0.5, cache="dual", **kw)
        assert all(model.mask_id not in r.token_ids for r in approx)  # decoded, refreshing at block starts only


class _Counting:
    """Counts the positions each forward of a module runs."""

    def __init__(self, module):
        self.lengths: list[int] = []
        module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        self.lengths.append(x.shape[1])


def test_window_forwards_run_only_the_window(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    counter = _Counting(model.module)
    prompt = model.encode_prompt(_questions(1)[0])
    t = len(prompt) + 16
    for mode, window in (("dual", [4, 4, 4]), ("prefix", [16, 12, 8, 4])):
        counter.lengths.clear()
        cfg = DecodeConfig(gen_length=16, block_length=4, steps=16, cache=mode)
        list(decode(model, [prompt], cfg, snapshots=False))
        # 4 blocks of 4 steps: the first step of each block runs everything, the others the window
        assert counter.lengths[::4] == [t] * 4
        assert sorted(set(counter.lengths[1:4] + counter.lengths[5:8] + counter.lengths[9:12]
                          + counter.lengths[13:16])) == sorted(set(window))
    counter.lengths.clear()
    list(decode(model, [prompt], DecodeConfig(gen_length=16, block_length=4, steps=16, cache="dual",
                                                cache_refresh=2), snapshots=False))
    assert counter.lengths == [t, 4, t, 4] * 4


def test_block_start_refresh_differs_from_uncached_and_is_batch_invariant(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    qs = _questions(10)
    for strategy, params in STRATEGIES[:3]:
        cfg = DecodeConfig(strategy=strategy, gen_length=16, block_length=4, early_stop=True, cache="dual", **params)
        alone = [fewstep.generate(model, [q], cfg)[0] for q in qs]
        batched = fewstep.generate(model, qs, cfg)
        assert [(r.token_ids, r.nfe) for r in alone] == [(r.token_ids, r.nfe) for r in batched], strategy
    plain = _run(model, qs, strategy="llada", steps=16)
    cached = _run(model, qs, strategy="llada", steps=16, cache="dual")
    assert [r.token_ids for r in plain] != [r.token_ids for r in cached]  # the approximation is real here


@pytest.mark.slow
def test_bundled_model_with_the_cache_keeps_its_accuracy(tiny_dlm):
    model = tiny_dlm
    task = arith.ArithTask()
    examples = task.examples()[:40]
    cfg = DecodeConfig(strategy="llada", steps=24, gen_length=24, block_length=8, cache="dual")
    results = fewstep.generate(model, [e.prompt for e in examples], cfg)
    assert sum(task.score(e, r.text).correct for e, r in zip(examples, results)) >= 32


def test_bad_cache_settings_are_one_clear_line():
    with pytest.raises(ConfigError, match="cache must be one of none, prefix, dual"):
        DecodeConfig(cache="full")
    with pytest.raises(ConfigError, match="cache_refresh must be >= 0"):
        DecodeConfig(cache="dual", cache_refresh=-1)

    class NoCache(torch.nn.Module):  # a model that cannot provide a cache
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            raise AssertionError("never called")

    from fewstep.models.adapter import DiffusionModel

    model = DiffusionModel(NoCache(), None, "no-cache-model", eos_id=2, pad_id=0, max_length=64, mask_id=1)
    with pytest.raises(ConfigError, match="no-cache-model does not support a key/value cache"):
        list(decode(model, [[5, 6]], DecodeConfig(gen_length=4, block_length=4, cache="dual")))


def test_cli_refuses_a_bad_cache_mode(capsys):
    from fewstep.cli import main

    assert main(["generate", "1 + 2 ?", "--set", "cache=everything"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cache must be one of none, prefix, dual" in err[0]
