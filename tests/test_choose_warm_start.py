"""scripts/choose_warm_start.py's rule: the fewest forwards within the tolerance of the no-draft row,
else the most accurate candidate, said so."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "choose_warm_start.py"
spec = importlib.util.spec_from_file_location("choose_warm_start", SCRIPT)
choose_warm_start = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_warm_start)


def row(acc, nfe, diff):
    return {"accuracy": acc, "nfe_mean": nfe, "vs_first": {"accuracy_diff": diff}}


def test_the_fewest_forwards_within_the_tolerance_else_the_most_accurate():
    settings = [{"remask_threshold": t} for t in (0.3, 0.5, 0.9)]
    base = row(0.90, 2.7, 0.0)
    within = [base, row(0.80, 1.5, -0.10), row(0.897, 2.0, -0.003), row(0.899, 2.5, -0.001)]
    assert choose_warm_start.choose(within, settings, 0.005) == ({"remask_threshold": 0.5}, True)
    beyond = [base, row(0.80, 1.5, -0.10), row(0.88, 2.0, -0.02), row(0.89, 3.0, -0.01)]
    assert choose_warm_start.choose(beyond, settings, 0.005) == ({"remask_threshold": 0.9}, False)
    assert all(c["init"] in ("inject", "interpolate") for c in choose_warm_start.candidates()
               + choose_warm_start.interpolation_candidates())
