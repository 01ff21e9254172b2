"""uniform_eb's sampler on hand-made logits, piece by piece against transformers' own
(``LinearTemperatureScheduleLogitsProcessor``, ``EntropyBoundSampler``,
``StableAndConfidentStoppingCriteria``): no model."""

from __future__ import annotations

import pytest
import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    LinearTemperatureScheduleLogitsProcessor,
    StableAndConfidentStoppingCriteria,
)

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError
from fewstep.strategies import uniform_eb
from fewstep.strategies.uniform_eb import Params, UniformEntropyBound


def logits(b=2, length=6, vocab=11, scale=3.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, vocab, generator=g) * scale


@pytest.mark.parametrize("n", [1, 5, 48])
def test_temperature_schedule_is_transformers(n):
    proc = LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=n)
    x = logits()
    for s in range(n):
        remaining = torch.tensor(n - s, dtype=torch.int32)  # transformers counts the steps remaining
        ref = proc(None, x, cur_step=remaining)
        assert torch.equal(x / uniform_eb.temperature(s, n, 0.4, 0.8), ref)
    assert float(uniform_eb.temperature(0, n, 0.4, 0.8)) == pytest.approx(0.8)
    assert float(uniform_eb.temperature(n - 1, n, 0.4, 0.8)) == pytest.approx(0.4 + 0.4 / n)


@pytest.mark.parametrize("bound", [1e-3, 0.1, 1.0, 5.0])
@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0])
def test_acceptance_is_transformers(bound, scale):
    x = logits(b=3, length=9, scale=scale, seed=int(scale * 10))
    sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=bound), 9, 11, 4)
    current, denoised = torch.zeros(3, 9, dtype=torch.long), torch.ones(3, 9, dtype=torch.long)
    sampler.accept_canvas(current, denoised, x, 1)
    ours = uniform_eb.accept(uniform_eb.entropy(x), bound)
    assert torch.equal(ours, sampler.accepted_token_mask)
    assert ours.any(1).all()  # the lowest-entropy position is always accepted


def test_acceptance_by_hand():
    ent = torch.tensor([[0.3, 0.0, 0.05, 2.0]])
    # sorted 0.0, 0.05, 0.3, 2.0; before each: 0, 0.0, 0.05, 0.35
    assert uniform_eb.accept(ent, 0.06).tolist() == [[True, True, True, False]]
    assert uniform_eb.accept(ent, 0.04).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("sample", [True, False])
def test_step_draws_what_transformers_draws(sample):
    """A row's step, drawn from a generator seeded with s, equals transformers' denoising step
    (multinomial, accept, renoise) after torch.manual_seed(s) with a batch of one."""
    params = Params(max_denoising_steps=4, entropy_bound=0.7, sample=sample)
    x = logits(b=1, length=7, vocab=13, scale=2.0)
    sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.7), 7, 13, 4)
    proc = LinearTemperatureScheduleLogitsProcessor(0.4, 0.8, 4)
    for s in range(4):
        torch.manual_seed(123)
        processed = proc(None, x, cur_step=torch.tensor(4 - s, dtype=torch.int32))
        probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
        denoised = torch.multinomial(probs.view(-1, 13), 1).view(1, 7) if sample else processed.argmax(-1)
        accepted = sampler.accept_canvas(torch.zeros(1, 7, dtype=torch.long), denoised, processed, s)
        ref = sampler.renoise_canvas(accepted, s)
        out = uniform_eb.step(x, s, params, [torch.Generator().manual_seed(123)])
        assert torch.equal(out.tokens, ref) and torch.equal(out.argmax, processed.argmax(-1))
        assert torch.equal(out.processed, processed)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_stop_is_transformers(k):
    """Over a sequence of steps whose argmax canvases repeat, the policy stops a row where
    transformers' stable-and-confident criterion first fires."""
    crit = StableAndConfidentStoppingCriteria(stability_threshold=k, confidence_threshold=2.0)
    seq = [logits(b=2, length=5, scale=4.0, seed=i) for i in (0, 1, 1, 1, 1, 2)]
    seq[3][1] = seq[3][1] * 0.01  # row 1: a flat (unconfident) step among the repeats
    params = Params(max_denoising_steps=len(seq), stability_threshold=k, confidence_threshold=2.0, sample=False)
    pol = UniformEntropyBound(params, seed=0)
    pol.start_block(torch.ones(2, 5, dtype=torch.bool))
    rows, fired = torch.arange(2), []
    for s, x in enumerate(seq[:-1]):
        processed = x / uniform_eb.temperature(s, len(seq), 0.4, 0.8)
        ref = crit(processed.argmax(-1), processed)
        _, done = pol.resample(x, rows, s, eos_id=999)
        assert done.tolist() == ref.tolist(), s
        fired.append(done.tolist())
    assert [True, True] in fired  # the criterion fires (the comparison above is not vacuous)


def test_a_stopped_row_ends_at_its_first_eos_and_conditioning_is_the_processed_logits():
    params = Params(max_denoising_steps=2, stability_threshold=0, confidence_threshold=100.0, sample=False)
    pol = UniformEntropyBound(params, seed=0)
    pol.start_block(torch.ones(1, 4, dtype=torch.bool))
    x = torch.full((1, 4, 5), -5.0)
    x[0, torch.arange(4), torch.tensor([3, 2, 4, 1])] = 5.0  # argmax 3 2 4 1, EOS = 2
    assert pol.conditioning(torch.arange(1), 0) is None
    tokens, done = pol.resample(x, torch.arange(1), 0, eos_id=2)
    assert done.tolist() == [True] and tokens.tolist() == [[3, 2, 2, 2]]
    assert torch.equal(pol.conditioning(torch.arange(1), 1), x / uniform_eb.temperature(0, 2, 0.4, 0.8))


def test_start_canvas_fills_open_positions_and_keeps_draft_tokens():
    pol = UniformEntropyBound(Params(), seed=7)
    tokens = torch.tensor([[-1, 5, -1, 6], [-1, -1, -1, -1], [2, 2, 2, 2]])
    open_ = torch.tensor([[True] * 4, [True] * 4, [False] * 4])
    pol.start_canvas(tokens, open_, vocab=50)
    noise = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(7))[0]
    assert tokens[0].tolist() == [int(noise[0]), 5, int(noise[2]), 6]  # draft tokens stay
    assert tokens[1].tolist() == noise.tolist()  # every row draws from its own generator, seeded alike
    assert tokens[2].tolist() == [2, 2, 2, 2]  # a row with nothing open draws nothing


@pytest.mark.parametrize("setting", ["temperature=0.5", "cfg_scale=1.0", "cache=prefix", "revise_threshold=0.5",
                                     "init=interpolate"])
def test_loop_settings_it_cannot_honour_are_refused(setting):
    key, value = setting.split("=")
    kw = {key: float(value) if value[0].isdigit() else value}
    if key == "init":
        kw["drafter"] = "tiny-ar"
    with pytest.raises(ConfigError, match=key):
        DecodeConfig(strategy="uniform_eb", gen_length=16, block_length=8, **kw)


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="t_max"):
        DecodeConfig(strategy="uniform_eb", t_min=0.8, t_max=0.4)
    with pytest.raises(ConfigError, match="multiple"):
        DecodeConfig(strategy="uniform_eb", gen_length=12, block_length=8)
