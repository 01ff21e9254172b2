"""The entropy-bounded sampler (``eb``) on hand-made tensors, and end to end on a scripted model."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep import ConfigError
from fewstep.strategies import eb

INF = float("inf")


def test_entropy_of_hand_made_distributions():
    probs = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]], dtype=torch.float64)
    assert eb.entropy(probs)[0].tolist() == pytest.approx([0.0, math.log(2), math.log(3)])


def test_commits_lowest_entropies_while_the_bound_holds():
    ent = torch.tensor([[0.30, 0.01, 0.05, 0.02, 0.9]], dtype=torch.float64)
    every = torch.ones_like(ent, dtype=torch.bool)
    # sorted: 0.01, 0.02, 0.05, 0.30, 0.9; sum of the first k minus the k-th: 0, 0.01, 0.03, 0.08, 0.38
    assert eb.select(ent, every, 0.0).tolist() == [[False, True, False, False, False]]
    assert eb.select(ent, every, 0.02).tolist() == [[False, True, False, True, False]]
    assert eb.select(ent, every, 0.05).tolist() == [[False, True, True, True, False]]
    assert eb.select(ent, every, 0.1).tolist() == [[True, True, True, True, False]]
    assert eb.select(ent, every, 1.0).all()


def test_only_eligible_positions_and_at_least_one_per_row():
    ent = torch.tensor([[0.0, 0.0, 2.0], [3.0, 2.5, 0.0]], dtype=torch.float64)
    eligible = torch.tensor([[False, True, True], [True, True, False]])
    out = eb.select(ent, eligible, 0.0)
    # row 0: 0.0 then 2.0, spent 0.0 for both (the largest is not counted); row 1: 2.5 then 3.0 spends 2.5
    assert out.tolist() == [[False, True, True], [False, True, False]]  # never an ineligible position
    none = eb.select(ent, torch.zeros_like(eligible), 5.0)
    assert not none.any()


def test_parameter_validation_names_the_strategy():
    with pytest.raises(ConfigError, match="eb: entropy_bound must be in"):
        fewstep.DecodeConfig(strategy="eb", entropy_bound=-0.1)
    with pytest.raises(ConfigError, match="eb: entropy_bound"):
        fewstep.DecodeConfig(strategy="eb", entropy_bound=float("nan"))
    with pytest.raises(ConfigError, match="has no setting 'entropy_bound'"):
        fewstep.DecodeConfig(strategy="threshold", entropy_bound=0.1)


def test_decodes_a_scripted_model_in_few_forwards():
    from scripted import MASK, final, scripted_model

    model = scripted_model(gen_length=16, answer_len=5, p=0.99)  # every position nearly certain
    ev = final(model, [[3], [4, 5]], fewstep.DecodeConfig(strategy="eb", gen_length=16, block_length=16,
                                                           entropy_bound=1.5))[-1]
    assert not (ev.canvas == MASK).any()
    assert ev.canvas[0, :5].tolist() == [10, 11, 12, 13, 14]
    # each position's entropy is about 0.09 nats: 15 of them (the largest is free) fit a bound of 1.5
    assert ev.nfe.tolist() == [1, 1]
    strict = final(model, [[3]], fewstep.DecodeConfig(strategy="eb", gen_length=16, block_length=16,
                                                       entropy_bound=0.0))[-1]
    assert strict.nfe.item() == 16  # a zero bound commits one position per step


def test_confidence_order_bounds_by_the_largest_entropy_so_far():
    ent = torch.tensor([[0.5, 0.01, 0.02, 0.3]], dtype=torch.float64)
    conf = torch.tensor([[0.99, 0.9, 0.8, 0.7]], dtype=torch.float64)  # order: 0, 1, 2, 3
    every = torch.ones_like(ent, dtype=torch.bool)
    # first k by confidence: 0.5 | 0.5+0.01 | +0.02 | +0.3; minus the largest (0.5): 0, 0.01, 0.03, 0.33
    assert eb.select(ent, every, 0.031, -conf).tolist() == [[True, True, True, False]]
    assert eb.select(ent, every, 0.005, -conf).tolist() == [[True, False, False, False]]
    cfg = fewstep.DecodeConfig(strategy="eb", order="confidence")
    assert cfg.order == "confidence"
    with pytest.raises(ConfigError, match="eb: order must be one of entropy, confidence"):
        fewstep.DecodeConfig(strategy="eb", order="random")
