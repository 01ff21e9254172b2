"""d3LLM's AUP (accuracy under parallelism) on hand-made numbers, against the equation worked by hand."""

from __future__ import annotations

import math

import pytest

from fewstep.evaluation.aup import aup, bench_aup, weight


def test_weight_is_one_at_the_best_accuracy_and_decays_below_it():
    assert weight(80.0, 80.0) == 1.0
    assert weight(90.0, 80.0) == 1.0  # capped at 1
    assert weight(40.0, 80.0) == pytest.approx(math.exp(-1.5))
    assert weight(0.0, 0.0) == 1.0  # every accuracy 0: nothing to weigh


def test_a_single_point_is_parallelism_times_accuracy():
    assert aup([(2.0, 75.0)]) == pytest.approx(150.0)


def test_the_equation_by_hand():
    """Points (1, 80), (2, 78), (4, 76), y_max 80, alpha 3:
    AUP = 1*80 + 1/2 (2-1)(78 W(78) + 80 W(80)) + 1/2 (4-2)(76 W(76) + 78 W(78))."""
    w = {y: math.exp(-3 * (1 - y / 80)) for y in (76, 78, 80)}
    by_hand = 80 + 0.5 * 1 * (78 * w[78] + 80 * w[80]) + 0.5 * 2 * (76 * w[76] + 78 * w[78])
    assert aup([(4.0, 76.0), (1.0, 80.0), (2.0, 78.0)]) == pytest.approx(by_hand)  # any order: sorted by TPF


def test_points_five_below_the_first_are_left_out():
    """y_min = y_1 - 5 with y_1 the accuracy at the lowest parallelism: (8, 70) is dropped."""
    assert aup([(1.0, 80.0), (2.0, 78.0), (8.0, 70.0)]) == pytest.approx(aup([(1.0, 80.0), (2.0, 78.0)]))
    assert aup([(1.0, 80.0), (2.0, 75.0)]) > aup([(1.0, 80.0)])  # exactly 5 below still counts


def test_y_max_from_other_methods_lowers_the_weights():
    alone = aup([(1.0, 60.0), (3.0, 60.0)])
    assert alone == pytest.approx(60 + 0.5 * 2 * (60 + 60))  # the curve's own best: every weight 1
    beside_better = aup([(1.0, 60.0), (3.0, 60.0)], y_max=90.0)
    assert beside_better == pytest.approx(60 + 0.5 * 2 * 120 * math.exp(-1.0))


@pytest.mark.parametrize("points", [[], [(0.0, 50.0)], [(1.0, 0.5e3)], [(float("nan"), 50.0)]])
def test_bad_points_are_refused(points):
    with pytest.raises(ValueError):
        aup(points)


def test_bench_aup_per_model_and_drafter_with_the_bench_best_as_y_max():
    rows = [
        {"model": "teacher", "accuracy": 0.90, "tokens_per_forward": 1.0, "config": {"drafter": ""}},
        {"model": "teacher", "accuracy": 0.88, "tokens_per_forward": 5.0, "config": {"drafter": ""}},
        {"model": "student", "accuracy": 0.87, "tokens_per_forward": 6.0, "config": {"drafter": ""}},
        {"model": "teacher", "accuracy": 0.85, "tokens_per_forward": 4.0, "config": {"drafter": "tiny-ar"}},
        {"model": "gold", "accuracy": 1.0, "tokens_per_forward": 0.0, "config": {}},  # no forwards: left out
    ]
    got = bench_aup(rows)
    assert set(got) == {"teacher", "student", "teacher + tiny-ar"}
    assert got["teacher"] == pytest.approx(aup([(1.0, 90.0), (5.0, 88.0)], y_max=90.0))
    assert got["student"] == pytest.approx(6.0 * 87.0)
    assert got["teacher + tiny-ar"] == pytest.approx(4.0 * 85.0)
    assert bench_aup([]) == {}
