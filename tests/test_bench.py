"""``fewstep bench``: paired statistics against the first strategy in bench.json and bench.md."""

from __future__ import annotations

import json

import pytest

from fewstep.evaluation.bench import BenchRequest, run_bench
from fewstep.evaluation.stats import PairedTable, mcnemar_exact, newcombe_paired


@pytest.mark.slow
def test_bench_reports_newcombe_interval_and_mcnemar(tmp_path, bundled):
    model = bundled("tiny-dlm")
    req = BenchRequest(task="arith", model=str(model), strategies=("llada", "llada:steps=4"), out=str(tmp_path),
                       limit=40, batch_size=20, repeats=1)
    result = run_bench(req, progress=False)
    first, second = result["results"]
    assert first["vs_first"]["accuracy_diff"] == 0 and first["vs_first"]["mcnemar_p"] == 1.0
    lo, hi = first["vs_first"]["accuracy_diff_ci95"]
    assert lo < 0 < hi  # an honest interval even against itself (no discordant pairs)

    rows = {lab: [json.loads(x) for x in (tmp_path / lab / "samples.jsonl").read_text().splitlines()]
            for lab in (first["label"], second["label"])}
    a = {r["id"]: r["correct"] for r in rows[first["label"]]}
    b = {r["id"]: r["correct"] for r in rows[second["label"]]}
    table = PairedTable.from_outcomes([a[i] for i in sorted(a)], [b[i] for i in sorted(a)])
    v = second["vs_first"]
    assert (v["only_first_correct"], v["only_second_correct"]) == (table.b, table.c)
    diff, lo, hi = newcombe_paired(table)
    assert v["accuracy_diff"] == diff and v["accuracy_diff_ci95"] == [lo, hi]
    assert v["mcnemar_p"] == mcnemar_exact(table)
    assert json.loads((tmp_path / "bench.json").read_text())["results"][1]["vs_first"]["mcnemar_p"] == v["mcnemar_p"]
    md = (tmp_path / "bench.md").read_text()
    assert "McNemar p" in md and "Newcombe" in md
