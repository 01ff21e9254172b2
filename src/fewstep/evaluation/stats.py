"""Small statistics for honest reporting: Wilson intervals for one proportion, Newcombe's interval
for the difference of two paired proportions, and the exact McNemar test.

Paired results (two strategies on the same problems) form a 2x2 table of counts::

                    second correct   second wrong
    first correct         a               b
    first wrong           c               d

Only the discordant pairs (b, c) carry information about the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class PairedTable:
    """Counts of a paired comparison: a both correct, b only the first, c only the second, d neither."""

    a: int
    b: int
    c: int
    d: int

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    @classmethod
    def from_outcomes(cls, first: Sequence[bool], second: Sequence[bool]) -> PairedTable:
        """The table of two outcome lists over the same problems, in the same order."""
        if len(first) != len(second):
            raise ValueError(f"paired outcomes of different lengths: {len(first)} and {len(second)}")
        pairs = [(bool(x), bool(y)) for x, y in zip(first, second)]
        return cls(a=pairs.count((True, True)), b=pairs.count((True, False)),
                   c=pairs.count((False, True)), d=pairs.count((False, False)))


def _phi(t: PairedTable) -> float:
    """Newcombe's continuity-corrected correlation of the two marginal proportions: with
    A = ad - bc, (A - n/2) / sqrt(product of the margins) when A > n/2, 0 when 0 <= A <= n/2, A / sqrt(...)
    when A < 0; 0 when a margin is empty."""
    margins = (t.a + t.b) * (t.c + t.d) * (t.a + t.c) * (t.b + t.d)
    if margins == 0:
        return 0.0
    cross: float = t.a * t.d - t.b * t.c
    if cross > t.n / 2:
        cross -= t.n / 2
    elif cross >= 0:
        return 0.0
    return cross / math.sqrt(margins)


def newcombe_paired(t: PairedTable, z: float = Z95) -> tuple[float, float, float]:
    """Difference of the paired proportions, second minus first ((c - b) / n), with Newcombe's
    method 10 interval (1998, Stat Med 17:2635): the Wilson intervals of the two marginal proportions
    combined by square-and-add, corrected for their correlation. Unlike the Wald interval it never
    has zero width and never leaves [-1, 1]. Returns (difference, lower, upper); (0, -1, 1) when n == 0.
    """
    n = t.n
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (t.a + t.b) / n, (t.a + t.c) / n  # first's and second's accuracy
    l1, u1 = wilson(t.a + t.b, n, z)
    l2, u2 = wilson(t.a + t.c, n, z)
    phi = _phi(t)
    diff = p2 - p1
    lower = diff - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = diff + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return diff, max(-1.0, lower), min(1.0, upper)


def mcnemar_exact(t: PairedTable) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each of the b + c discordant pairs goes
    either way with probability 1/2, so p = min(1, 2 P(Binomial(b + c, 1/2) <= min(b, c))); 1 when
    there are no discordant pairs."""
    m, k = t.b + t.c, min(t.b, t.c)
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m  # exact in integers up to the last division
    return min(1.0, 2 * tail)
