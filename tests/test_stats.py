"""Statistics of the reports: Wilson intervals, Newcombe's paired interval, the exact McNemar test,
against published worked examples and scipy where it computes the same statistic."""

from __future__ import annotations

import itertools
import math

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


# Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based
# on paired data", Stat Med 17:2635-2650, Table II: the worked examples (e, f, g, h) = (both, first only,
# second only, neither). The expected method-10 limits are computed here independently of
# fewstep.evaluation.stats, in Newcombe's own orientation (theta = first minus second) and notation,
# with the Wilson limits found by bisection on their defining equation rather than the closed form. (The
# limits printed in the paper are not reproduced here from memory; the published worked example of
# the method is asserted above, from Fagerland, Lydersen & Laake.)
NEWCOMBE_TABLE_II = [(36, 12, 2, 0), (5, 1, 2, 0), (10, 3, 0, 7), (1, 1, 7, 12)]


def _wilson_by_bisection(r: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The two solutions pi of |r/n - pi| = z sqrt(pi (1 - pi) / n) (the score interval's definition)."""
    p = r / n

    def outside(pi: float) -> bool:
        return (p - pi) ** 2 > z * z * pi * (1 - pi) / n

    def root(lo: float, hi: float, lo_outside: bool) -> float:
        for _ in range(200):
            mid = (lo + hi) / 2
            if outside(mid) == lo_outside:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if r == 0 else root(0.0, p, True)
    upper = 1.0 if r == n else root(p, 1.0, False)
    return lower, upper


def _newcombe_method_10(e: int, f: int, g: int, h: int) -> tuple[float, float, float]:
    """theta = p1 - p2 with p1 = (e + f) / n, p2 = (e + g) / n; L = theta - delta, U = theta + epsilon."""
    n = e + f + g + h
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = _wilson_by_bisection(e + f, n)
    l2, u2 = _wilson_by_bisection(e + g, n)
    big_a = e * h - f * g
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    if margins == 0 or 0 <= big_a <= n / 2:
        phi = 0.0
    elif big_a > n / 2:
        phi = (big_a - n / 2) / margins**0.5
    else:
        phi = big_a / margins**0.5
    delta = ((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2) ** 0.5
    epsilon = ((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2) ** 0.5
    theta = p1 - p2
    return theta, theta - delta, theta + epsilon


@pytest.mark.parametrize("e,f,g,h", NEWCOMBE_TABLE_II)
def test_newcombe_equals_method_10_computed_independently(e, f, g, h):
    theta, lower, upper = _newcombe_method_10(e, f, g, h)
    diff, lo, hi = newcombe_paired(PairedTable(a=e, b=f, c=g, d=h))  # second minus first
    assert (diff, lo, hi) == pytest.approx((-theta, -upper, -lower), abs=1e-12)


def test_newcombe_first_table_ii_example():
    """(e, f, g, h) = (36, 12, 2, 0): theta = 10/50 = 0.2, method 10 limits 0.0569 to 0.3404 (4 places,
    from the independent computation above)."""
    theta, lower, upper = _newcombe_method_10(36, 12, 2, 0)
    assert (round(theta, 4), round(lower, 4), round(upper, 4)) == (0.2, 0.0569, 0.3404)
    diff, lo, hi = newcombe_paired(PairedTable(36, 12, 2, 0))
    assert (round(diff, 4), round(lo, 4), round(hi, 4)) == (-0.2, -0.3404, -0.0569)


@pytest.mark.parametrize("e,f,g,h", NEWCOMBE_TABLE_II)
def test_mcnemar_exact_on_table_ii_by_hand_and_scipy(e, f, g, h):
    """p = min(1, 2 sum_{i <= min(f, g)} C(f + g, i) / 2^(f + g)), summed here by hand; and scipy's
    exact binomial test on the discordant pairs where scipy is installed."""
    m, k = f + g, min(f, g)
    by_hand = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    assert mcnemar_exact(PairedTable(e, f, g, h)) == pytest.approx(by_hand, rel=1e-15)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    assert mcnemar_exact(PairedTable(e, f, g, h)) == pytest.approx(binomtest(f, m, 0.5).pvalue, rel=1e-12)


def test_mcnemar_first_table_ii_example_exactly():
    """f = 12, g = 2: p = 2 (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 2 * 106 / 16384."""
    assert mcnemar_exact(PairedTable(36, 12, 2, 0)) == 212 / 16384
