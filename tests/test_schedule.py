import pytest
import torch

from fewstep.strategies.llada import num_transfer_tokens, topk_mask


@pytest.mark.parametrize("count,steps", [(8, 8), (8, 3), (32, 5), (7, 7), (3, 8), (0, 4), (24, 24)])
def test_schedule_sums_and_front_loads_remainder(count, steps):
    sched = num_transfer_tokens(torch.tensor([count]), steps)[0].tolist()
    assert sum(sched) == count
    assert len(sched) == steps
    base, rem = divmod(count, steps)
    assert sched == [base + 1] * rem + [base] * (steps - rem)


def test_schedule_is_per_row():
    sched = num_transfer_tokens(torch.tensor([10, 4, 0]), 4)
    assert sched.tolist() == [[3, 3, 2, 2], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_topk_mask_picks_highest_and_never_ineligible():
    inf = float("-inf")
    conf = torch.tensor([[0.1, 0.9, 0.5, inf], [inf, inf, 0.2, 0.3]], dtype=torch.float64)
    out = topk_mask(conf, torch.tensor([2, 3]))
    assert out.tolist() == [[False, True, True, False], [False, False, True, True]]


def test_topk_mask_zero_k_commits_nothing():
    conf = torch.rand(3, 5, dtype=torch.float64)
    assert not topk_mask(conf, torch.zeros(3, dtype=torch.long)).any()
