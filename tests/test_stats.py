"""Statistics of the reports: Wilson intervals, Newcombe's paired interval, the exact McNemar test,
against published worked examples and scipy where it computes the same statistic."""

from __future__ import annotations

import itertools

import pytest

from fewstep.evaluation.stats import PairedTable, mcnemar_exact, newcombe_paired, wilson


def test_newcombe_matches_the_published_worked_example():
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: complete
    response before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]; the
    Newcombe square-and-add interval (Newcombe 1998, method 10) for p1+ - p+1 is -0.0621 (-0.1186 to -0.0046).
    Here the difference is second minus first, so the signs flip."""
    diff, lo, hi = newcombe_paired(PairedTable(a=59, b=6, c=16, d=80))
    assert (round(diff, 4), round(lo, 4), round(hi, 4)) == (0.0621, 0.0046, 0.1186)


def test_newcombe_interval_is_never_degenerate():
    """No discordant pairs: the Wald interval is [0, 0]; Newcombe's has width and contains 0."""
    diff, lo, hi = newcombe_paired(PairedTable(a=900, b=0, c=0, d=100))
    assert diff == 0 and lo < -0.001 and hi > 0.001
    diff, lo, hi = newcombe_paired(PairedTable(a=0, b=0, c=0, d=5))  # all wrong, few problems
    assert diff == 0 and -1 <= lo < 0 < hi <= 1
    assert newcombe_paired(PairedTable(0, 0, 0, 0)) == (0.0, -1.0, 1.0)


@pytest.mark.parametrize("a,b,c,d", [(36, 12, 2, 0), (5, 1, 2, 0), (1, 1, 7, 12), (10, 0, 3, 7), (0, 20, 0, 0)])
def test_newcombe_interval_flips_with_the_order_and_stays_in_range(a, b, c, d):
    diff, lo, hi = newcombe_paired(PairedTable(a, b, c, d))
    rdiff, rlo, rhi = newcombe_paired(PairedTable(a, c, b, d))
    assert (rdiff, rlo, rhi) == pytest.approx((-diff, -hi, -lo))
    assert -1 <= lo <= diff <= hi <= 1
    assert diff == pytest.approx((c - b) / (a + b + c + d))


def test_paired_table_from_outcomes():
    first = [True, True, False, False, True]
    second = [True, False, True, False, False]
    assert PairedTable.from_outcomes(first, second) == PairedTable(a=1, b=2, c=1, d=1)
    with pytest.raises(ValueError):
        PairedTable.from_outcomes([True], [True, False])


def test_mcnemar_exact_equals_scipy_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    for b, c in itertools.product(range(0, 14), range(0, 14)):
        expected = 1.0 if b + c == 0 else stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(PairedTable(50, b, c, 50)) == pytest.approx(expected, rel=1e-12), (b, c)
    big = PairedTable(800, 30, 61, 109)
    assert mcnemar_exact(big) == pytest.approx(stats.binomtest(30, 91, 0.5).pvalue, rel=1e-10)


def test_mcnemar_worked_values():
    assert mcnemar_exact(PairedTable(10, 0, 0, 10)) == 1.0
    assert mcnemar_exact(PairedTable(0, 0, 5, 0)) == pytest.approx(2 / 32)  # all five discordant one way
    assert mcnemar_exact(PairedTable(0, 3, 3, 0)) == 1.0


def test_wilson_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 10), (3, 10), (10, 10), (900, 1000), (1, 300)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
