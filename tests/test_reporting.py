"""What results are reported with: the Wilson interval and the bench table, on hand-made numbers."""

from __future__ import annotations

import pytest

from fewstep.evaluation.bench import markdown_table
from fewstep.evaluation.stats import wilson

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction).
PUBLISHED = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize("successes,n,lo,hi", PUBLISHED)
def test_wilson_matches_published_intervals(successes, n, lo, hi):
    got = wilson(successes, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for level, z in ((0.95, 1.959963984540054), (0.99, 2.5758293035489004)):
        for n in (1, 2, 7, 30, 263, 1000):
            for successes in sorted({0, 1, n // 3, n // 2, n - 1, n}):
                ci = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
                assert wilson(successes, n, z) == pytest.approx((ci.low, ci.high), abs=1e-12), (level, successes, n)


def test_wilson_edges_and_other_levels():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(900, 1000)  # the README's 90.0% [88.0, 91.7]
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (88.0, 91.7)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    narrow, wide = wilson(81, 263, z=1.0), wilson(81, 263, z=2.575829)
    assert wide[0] < narrow[0] < 81 / 263 < narrow[1] < wide[1]


def _row(spec: str, strategy: str, accuracy: float, ci: tuple[float, float], nfe: float, tpf: float, wall: float,
         overhead: float, vs_first: dict) -> dict:
    return {"spec": spec, "strategy": strategy, "accuracy": accuracy, "accuracy_ci95": list(ci), "nfe_mean": nfe,
            "tokens_per_forward": tpf, "wall_s": wall, "overhead_fraction": overhead, "vs_first": vs_first}


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip() for c in line[2:-2].split(" | ")]


def test_bench_markdown_table():
    """Each column by its header, so that a column added to the table does not break the check."""
    result = {
        "task": "arith", "model": "tiny-dlm", "n": 1000, "batch_size": 100, "repeats": 3,
        "results": [
            _row("llada", "llada", 0.9, (0.8798, 0.9171), 24.0, 0.5875, 152.554, 0.0049,
                 {"nfe_ratio": 1.0, "wall_ratio": 1.0, "accuracy_diff": 0.0, "accuracy_diff_ci95": [0.0, 0.0]}),
            _row("threshold:threshold=0.8", "threshold", 0.895, (0.874, 0.913), 2.26, 6.2345, 13.7249, 0.01376,
                 {"nfe_ratio": 10.6195, "wall_ratio": 11.115, "accuracy_diff": -0.005,
                  "accuracy_diff_ci95": [-0.0104, 0.0004]}),
        ],
    }
    head, blank, *table = markdown_table(result).split("\n")
    assert head.startswith("arith / tiny-dlm: 1000 problems, batch 100, median of 3 timed repeat(s)")
    assert blank == "" and table[-1] == "" and len(table) == 2 + 2 + 1  # header, rule, two rows, final newline
    header = _cells(table[0])
    assert set(table[1].strip("|").split("|")) <= {"---", "---:"} and table[1].count("|") == len(header) + 1
    rows = [dict(zip(header, _cells(line), strict=True)) for line in table[2:4]]
    expected = [
        {"strategy": "`llada`", "accuracy [95% CI]": "90.0% [88.0%, 91.7%]",
         "Δ acc vs first [95% CI]": "+0.0% [+0.0%, +0.0%]", "NFE": "24.00", "tokens/forward": "0.59",
         "NFE ratio": "1.00x", "wall s": "152.55", "wall ratio": "1.00x", "engine overhead": "0.5%"},
        {"strategy": "`threshold:threshold=0.8`", "accuracy [95% CI]": "89.5% [87.4%, 91.3%]",
         "Δ acc vs first [95% CI]": "-0.5% [-1.0%, +0.0%]", "NFE": "2.26", "tokens/forward": "6.23",
         "NFE ratio": "10.62x", "wall s": "13.72", "wall ratio": "11.12x", "engine overhead": "1.4%"},
    ]
    assert [{k: row[k] for k in expected[0]} for row in rows] == expected
