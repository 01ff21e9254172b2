"""The lean greedy loop of drafters (fewstep.drafting.lean) against transformers' generate(): the same
drafts token for token on tiny-ar and on random Llama / Qwen2 / Qwen3 models with left padding, and
the fall back to generate() for architectures it does not support."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fewstep import ConfigError
from fewstep.drafting import lean
from fewstep.drafting.drafter import draft
from fewstep.models.adapter import CausalModel
from fewstep.tasks import arith

PROMPTS = ["Mia has 7 pens .", "Tom has 9 eggs . He sells 4 . How many eggs are left ?", "1 + 2 = ?",
           "Sam buys 3 bags of 6 apples . He eats 5 . How many apples are left ?", "x"]


def assert_same_drafts(a, b, atol=1e-4):
    assert [(d.token_ids, d.ended, d.nfe) for d in a] == [(d.token_ids, d.ended, d.nfe) for d in b]
    for x, y in zip(a, b):
        assert x.token_probs == pytest.approx(y.token_probs, abs=atol)
        assert x.eos_prob == pytest.approx(y.eos_prob, abs=atol)
        assert x.seconds > 0 and y.seconds > 0


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [37, 100])
def test_tiny_ar_drafts_equal_generate_token_for_token(tiny_ar, batch_size):
    prompts = [e.prompt for e in arith.ArithTask().examples()[:200]]
    assert len(prompts) == 200
    assert lean.supports(tiny_ar.module)
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i: i + batch_size]
        assert_same_drafts(draft(tiny_ar, batch, 80, method="lean"), draft(tiny_ar, batch, 80, method="generate"))
    short = [e.prompt for e in arith.ArithTask().examples()[:16]]  # a budget that cuts drafts: out of budget
    cut = draft(tiny_ar, short, 6)
    assert_same_drafts(cut, draft(tiny_ar, short, 6, method="generate"))
    assert all(d.nfe == 6 and not d.ended for d in cut)


def random_drafter(tiny_ar, config, std: float = 0.2, seed: int = 0) -> CausalModel:
    """A random causal LM of ``config`` over tiny-ar's tokenizer; weights drawn wide so logits are peaked."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    module = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 2:
                p.normal_(0, std)
            elif "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:  # biases
                p.normal_(0, 0.1)
    return dataclasses.replace(tiny_ar, module=module, name=config.model_type, stop_ids=())


def small(cls, **extra):
    return cls(vocab_size=76, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
               max_position_embeddings=512, bos_token_id=3, eos_token_id=2, pad_token_id=0, **extra)


def configs():
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    return [small(LlamaConfig, num_key_value_heads=4, tie_word_embeddings=True),
            small(LlamaConfig, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
            small(Qwen2Config, num_key_value_heads=2),  # q/k/v biases, grouped keys
            small(Qwen3Config, num_key_value_heads=1, head_dim=32)]  # q_norm / k_norm


@pytest.mark.parametrize("index", range(4))
def test_random_llama_and_qwen_drafts_equal_generate(tiny_ar, index):
    model = random_drafter(tiny_ar, configs()[index])
    assert lean.supports(model.module)
    free = draft(model, PROMPTS, 12, method="generate")  # left padding of every length from 1 to 60 tokens
    assert_same_drafts(draft(model, PROMPTS, 12, method="lean"), free)
    # rows that stop early and rows that run to the budget in one batch: stop at a token one row wrote
    stop = free[0].token_ids[2]
    stopping = dataclasses.replace(model, stop_ids=(stop,))
    stopped = draft(stopping, PROMPTS, 12, method="generate")
    assert stopped[0].ended and stopped[0].nfe <= 3
    assert_same_drafts(draft(stopping, PROMPTS, 12, method="lean"), stopped)


def test_unsupported_architectures_fall_back_to_generate(tiny_ar):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    gpt2 = random_drafter(tiny_ar, GPT2Config(vocab_size=76, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                              bos_token_id=3, eos_token_id=2, pad_token_id=0))
    assert not lean.supports(gpt2.module)
    auto, forced = draft(gpt2, PROMPTS[:3], 5), draft(gpt2, PROMPTS[:3], 5, method="generate")
    assert [d.token_ids for d in auto] == [d.token_ids for d in forced]
    with pytest.raises(ConfigError, match="does not support"):
        draft(gpt2, PROMPTS[:3], 5, method="lean")
    with pytest.raises(ConfigError, match="drafting method"):
        draft(tiny_ar, PROMPTS[:3], 5, method="fast")
    sliding = small(Qwen2Config, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert not lean.supports(random_drafter(tiny_ar, sliding).module)
    assert not lean.supports(random_drafter(tiny_ar, small(LlamaConfig, hidden_act="gelu")).module)
