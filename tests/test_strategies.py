"""Scorers and commit policies on hand-made tensors, no model."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.config import DecodeConfig
from fewstep.decoding.loop import ended_rows
from fewstep.strategies import cad, factor, factor_prefix, make_policy, scorers, threshold
from fewstep.strategies.base import StepContext

INF = float("-inf")


def probs_of(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_scorers():
    probs = probs_of([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]])  # [1, 2, 3]
    cand = torch.tensor([[0, 1]])
    assert scorers.probability(probs, cand).tolist() == [[0.7, 0.35]]
    torch.testing.assert_close(scorers.margin(probs, cand), torch.tensor([[0.5, 0.05]], dtype=torch.float64))
    ent = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert scorers.neg_entropy(probs, cand)[0, 0].item() == pytest.approx(-ent)
    assert scorers.neg_entropy(probs_of([[[1.0, 0.0, 0.0]]]), cand[:, :1]).item() == 0.0
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    r1, r2 = scorers.random(probs, cand, g1), scorers.random(probs, cand, g2)
    assert torch.equal(r1, r2) and ((0 <= r1) & (r1 < 1)).all()
    assert not torch.equal(r1, scorers.random(probs, cand, torch.Generator().manual_seed(1)))  # the seed is used


def test_threshold_commits_all_above_and_at_least_one():
    conf = torch.tensor([[0.95, 0.5, 0.91, INF], [0.3, 0.6, INF, INF], [INF, INF, INF, INF]], dtype=torch.float64)
    out = threshold.select(conf, 0.9)
    assert out.tolist() == [[True, False, True, False], [False, True, False, False], [False] * 4]


def test_factor_rule():
    # Fast-dLLM: the n-th (1-based) sorted confidence must be >= 1 - f/(n+1) (f = 1: 0.667, 0.75, 0.8),
    # the first always passes; k = first failure (0-based); k == N - 1 (or no failure) commits all N
    conf = torch.tensor([[0.9, 0.7, 0.76, 0.1]], dtype=torch.float64)  # sorted: 0.9, 0.76, 0.7 (< 0.75) k=2
    assert factor.select(conf, 1.0).tolist() == [[True, False, True, False]]
    low = torch.tensor([[0.3, 0.2, INF]], dtype=torch.float64)  # N=2, the second fails: k = N - 1 -> both
    assert factor.select(low, 1.0).tolist() == [[True, True, False]]
    last_fails = torch.tensor([[0.4, 0.99, 0.99]], dtype=torch.float64)  # 0.99, 0.99 ok, 0.4 (< 0.75) is last
    assert factor.select(last_fails, 1.0).tolist() == [[True, True, True]]
    all_pass = torch.tensor([[0.97, 0.99, 0.98, INF]], dtype=torch.float64)
    assert factor.select(all_pass, 1.0).tolist() == [[True, True, True, False]]
    one = torch.tensor([[INF, 0.01, INF], [INF, INF, INF]], dtype=torch.float64)  # a single candidate; none
    assert factor.select(one, 1.0).tolist() == [[False, True, False], [False, False, False]]
    neg = torch.tensor([[-3.0, -2.5, INF]], dtype=torch.float64)  # scores below -1 (negative entropy): k=0 -> 1
    assert factor.select(neg, 1.0).tolist() == [[False, True, False]]
    # a larger factor lowers every bound: 0.7 passes 1 - 2/4 = 0.5, then 0.1 fails and is last -> all four
    assert factor.select(conf, 2.0).tolist() == [[True, True, True, True]]


def test_factor_prefix_rule():
    # the variant: exactly the longest all-passing sorted prefix, at least one
    conf = torch.tensor([[0.9, 0.7, 0.76, 0.1]], dtype=torch.float64)
    assert factor_prefix.select(conf, 1.0).tolist() == [[True, False, True, False]]
    low = torch.tensor([[0.3, 0.2, INF]], dtype=torch.float64)  # none pass: still the top one
    assert factor_prefix.select(low, 1.0).tolist() == [[True, False, False]]
    prefix_only = torch.tensor([[0.4, 0.99, 0.99]], dtype=torch.float64)  # 0.4 (< 0.75) stays masked
    assert factor_prefix.select(prefix_only, 1.0).tolist() == [[False, True, True]]


def test_cad_k_rule():
    conf = torch.tensor([[0.99, 0.97, 0.96, 0.5, INF], [0.2, 0.1, INF, INF, INF]], dtype=torch.float64)
    assert cad.select(conf, 0.95, 1, 8).tolist() == [[True, True, True, False, False],
                                                     [True, False, False, False, False]]
    # only the top max_tokens are counted
    assert cad.select(conf, 0.95, 1, 2)[0].sum() == 2
    # min_tokens forces more, capped by the number of eligible positions
    assert cad.select(conf, 0.95, 4, 8)[0].sum() == 4
    assert cad.select(conf, 0.95, 4, 8)[1].sum() == 2


def ctx(conf, cand, step=0, progress=0.0, eos=9):
    conf = torch.tensor(conf, dtype=torch.float64)
    return StepContext(conf, torch.tensor(cand), torch.isfinite(conf), step,
                       torch.full((conf.shape[0],), progress, dtype=torch.float64), eos)


def test_cad_eos_guard():
    policy = cad.CAD(tau=0.9, min_tokens=1, max_tokens=0, max_steps_per_block=3, eos_min_progress=0.5, block_length=4)
    # Every eligible candidate is EOS and progress is below the guard: nothing may be committed...
    c = ctx([[0.99, 0.98, INF, INF]], [[9, 9, 1, 1]], step=0, progress=0.2)
    assert not policy.step(c).commit.any()
    # ...until the guard lifts (the loop completes a block whose row commits nothing: tests/test_loop.py).
    c = ctx([[0.99, 0.98, INF, INF]], [[9, 9, 1, 1]], step=1, progress=0.6)
    assert policy.step(c).commit.tolist() == [[True, True, False, False]]


def test_policies_from_config():
    assert type(make_policy(DecodeConfig(strategy="cad"))).__name__ == "CAD"
    assert make_policy(DecodeConfig(strategy="cad", max_steps_per_block=3)).max_steps() == 3
    assert make_policy(DecodeConfig(strategy="threshold")).max_steps() == 24


@pytest.mark.parametrize(
    "row,upto,expected",
    [
        ([5, 6, 2, 2, 4], 4, True),  # answer then EOS up to the end of the block
        ([5, 2, 6, 2, 2], 4, False),  # EOS, then more text: not finished
        ([5, 6, 7, 8, 2], 4, False),  # no EOS yet
        ([2, 2, 2, 2, 2], 4, True),
    ],
)
def test_ended_rows(row, upto, expected):
    assert ended_rows(torch.tensor([row]), upto, eos_id=2).item() is expected


def test_block_threshold_commits_above_threshold_with_a_minimum():
    from fewstep.strategies import block_threshold as bt

    conf = torch.tensor([[0.99, 0.95, 0.5, 0.97, INF], [0.2, 0.1, 0.3, INF, INF]], dtype=torch.float64)
    # strictly above 0.95 (LLaDA 2's rule): 0.99 and 0.97, not 0.95
    assert bt.select(conf, 0.95, 1).tolist() == [[True, False, False, True, False], [False, False, True, False, False]]
    # the minimum: the two most confident, capped by the eligible positions
    assert bt.select(conf, 0.95, 2)[1].tolist() == [True, False, True, False, False]
    assert bt.select(conf, 0.95, 9).sum(1).tolist() == [4, 3]


def test_block_threshold_token_editing_is_bounded():
    from fewstep.strategies import block_threshold as bt

    policy = bt.policy(bt.Params(threshold=0.9, editing_threshold=0.6, max_edits=1), DecodeConfig(block_length=3))
    policy.start_block(torch.tensor([[True, True, True]]))
    # position 0 committed earlier with token 4; the model now puts 0.7 on token 5 there; position 1 holds
    # token 6 and the model agrees; position 2 is masked
    probs = torch.tensor([[[0, 0, 0, 0, 0.3, 0.7, 0], [0, 0, 0, 0, 0, 0.1, 0.9], [0.5, 0.5, 0, 0, 0, 0, 0]]],
                         dtype=torch.float64)
    c = StepContext(torch.tensor([[INF, INF, 0.5]], dtype=torch.float64), torch.tensor([[5, 6, 0]]),
                    torch.tensor([[False, False, True]]), 1, None, 2, probs, torch.tensor([[4, 6, 1]]), None)
    d = policy.step(c)
    assert d.edit.tolist() == [[True, False, False]] and d.commit.tolist() == [[False, False, True]]
    c.tokens = torch.tensor([[5, 6, 1]])
    c.candidates = torch.tensor([[4, 6, 0]])  # the model changes its mind again: no second edit (max_edits=1)
    c.probs = probs[..., [0, 1, 2, 3, 5, 4, 6]]
    assert not policy.step(c).edit.any()
    # editing_threshold 1 (the default): no editing at all
    off = bt.policy(bt.Params(threshold=0.9), DecodeConfig(block_length=3))
    off.start_block(torch.tensor([[True, True, True]]))
    assert getattr(off.step(c), "edit", None) is None


def test_policies_that_declare_always_commits_do():
    """The loop skips its check for rows whose step changed nothing only for policies that declare
    ``always_commits``: on random confidences every row with an eligible position commits one."""
    from fewstep import DecodeConfig
    from fewstep.strategies import REGISTRY, make_policy, model_kind

    g = torch.Generator().manual_seed(0)
    for name in REGISTRY:
        if model_kind(name) != "diffusion":
            continue
        policy = make_policy(DecodeConfig(strategy=name, gen_length=8, block_length=8, steps=8)
                             if name == "llada" else DecodeConfig(strategy=name, gen_length=8, block_length=8))
        if not policy.always_commits:
            continue
        for _ in range(20):
            eligible = torch.rand(4, 8, generator=g) < 0.6
            eligible[:, 0] = True
            policy.start_block(eligible)
            wanted = policy.rows_needing_forward(0, eligible)
            probs = torch.softmax(torch.randn(4, 8, 12, generator=g, dtype=torch.float64) * 3, -1)
            cand = probs.argmax(-1)
            conf = probs.max(-1).values.masked_fill(~eligible, float("-inf"))
            c = StepContext(conf, cand, eligible, 0, torch.zeros(4, dtype=torch.float64), 11, probs, cand.clone(), None)
            commit = policy.step(c).commit
            rows = eligible.any(1) if wanted is None else eligible.any(1) & wanted
            assert (commit & eligible).any(1)[rows].all(), name
