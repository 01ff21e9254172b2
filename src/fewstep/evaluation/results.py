"""Result files of ``fewstep eval`` and ``fewstep bench``: reading, atomic writing, merging, summaries.

An eval directory holds ``samples.jsonl`` (one row per problem, keyed by its ``id``),
``summary.json`` (rewritten after each batch) and, with several ranks, ``samples.rank{r}.jsonl``
until rank 0 merges them. Nothing here decodes; :mod:`fewstep.evaluation.runner` and
:mod:`fewstep.evaluation.distributed` orchestrate, and both import this module.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


def _per_rank(samples: list[dict[str, Any]], key: str) -> dict[int, float]:
    """Sum of ``key`` over the samples of each rank (rows without a rank count as rank 0)."""
    sums: dict[int, float] = {}
    for s in samples:
        rank = int(s.get("rank", 0))
        sums[rank] = sums.get(rank, 0.0) + s[key]
    return sums


def summarise(samples: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (with a Wilson interval), NFE and cost over ``samples``.

    ``wall_s`` / ``model_s``: ranks decode at the same time, so these are the largest per-rank sum
    of batch times (the plain sum for a one-process run); ``wall_s_per_rank`` lists every rank's
    when there is more than one.
    """
    from fewstep.evaluation.stats import wilson

    n = len(samples)
    correct = sum(bool(s["correct"]) for s in samples)
    nfe = sum(s["nfe"] for s in samples)
    lo, hi = wilson(correct, n)
    walls = _per_rank(samples, "wall_s")
    summary = {
        **header,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "nfe_mean": nfe / n if n else 0.0,
        "tokens_per_forward": sum(s["answer_tokens"] for s in samples) / nfe if nfe else 0.0,
        "drafter_nfe_mean": sum(s.get("drafter_nfe", 0) for s in samples) / n if n else 0.0,
        "wall_s": max(walls.values(), default=0.0),
        "model_s": max(_per_rank(samples, "model_s").values(), default=0.0),
    }
    if len(walls) > 1:
        summary["wall_s_per_rank"] = [walls[r] for r in sorted(walls)]
    return summary


def sample_rows(task, batch, results, wall: float, model_s: float, rank: int = 0) -> list[dict[str, Any]]:
    """One samples.jsonl row per problem: output, score, cost (batch time split evenly)."""
    rows = []
    for e, r in zip(batch, results):
        sc = task.score(e, r.text)
        rows.append({"id": e.id, "prompt": e.prompt, "output": r.text, "reference": e.reference,
                     "extracted": sc.extracted, "correct": sc.correct, "nfe": r.nfe,
                     "answer_tokens": r.answer_tokens, "drafter_nfe": r.drafter_nfe,
                     "wall_s": wall / len(batch), "model_s": model_s / len(batch), "rank": rank})
    return rows


def environment() -> dict[str, Any]:
    import torch
    import transformers

    from fewstep import __version__

    return {
        "fewstep": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by an interruption: that problem is decoded again
    return rows


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows``, one JSON object per line, in one atomic rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    os.replace(tmp, path)


def shard_path(out: Path, rank: int, world: int) -> Path:
    """The file a rank appends to: samples.jsonl alone, samples.rank{r}.jsonl with several ranks."""
    return out / SAMPLES if world == 1 else out / f"samples.rank{rank}.jsonl"


def shard_files(out: Path) -> list[Path]:
    """The per-rank sample files in ``out``, by rank."""
    files = [p for p in out.glob("samples.rank*.jsonl") if p.stem.removeprefix("samples.rank").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("samples.rank")))


def collect(out: Path) -> list[dict[str, Any]]:
    """Every sample written in ``out`` so far (samples.jsonl, then the rank files), one per problem."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [out / SAMPLES, *shard_files(out)]:
        for row in read_samples(path):
            rows.setdefault(row["id"], row)
    return list(rows.values())


def merge(out: Path, order: dict[str, int]) -> list[dict[str, Any]]:
    """Fold the rank files into samples.jsonl, in problem order, and remove them."""
    rows = sorted(collect(out), key=lambda r: order.get(r["id"], len(order)))
    write_jsonl(out / SAMPLES, rows)
    for path in shard_files(out):
        path.unlink()
    return rows


def one_line(s: dict[str, Any]) -> str:
    lo, hi = s["accuracy_ci95"]
    return (f"{s['task']} {s['model']} {s['strategy']}: accuracy {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"on {s['n']} | NFE {s['nfe_mean']:.2f} | tokens/forward {s['tokens_per_forward']:.2f} | "
            f"drafter NFE {s['drafter_nfe_mean']:.2f} | wall {s['wall_s']:.1f}s (model {s['model_s']:.1f}s)")
