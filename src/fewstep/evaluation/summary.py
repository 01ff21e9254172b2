"""What ``fewstep eval`` and ``fewstep bench`` report: one row per problem (:func:`sample_rows`), the
summary over rows (:func:`summarise`), the machine it ran on (:func:`environment`) and the one line
printed at the end (:func:`one_line`). Nothing here reads or writes files (see
:mod:`fewstep.evaluation.store`)."""

from __future__ import annotations

import os
import platform
from typing import Any


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
    when there is more than one. ``wall_s`` is end to end: a drafter's per-problem seconds
    (``drafter_s``, summed the same way) are inside it, ``model_s`` is the diffusion model's
    forwards only. The drafter's one-time load (``drafter_load_s``, from the header) is in neither.
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
        "drafter_s": max(_per_rank([s for s in samples if "drafter_s" in s], "drafter_s").values(), default=0.0),
        **{f"{k}_mean": sum(s.get(k, 0) for s in samples) / n if n else 0.0
           for k in ("injected", "confirmed", "revoked", "edited")},
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
                     "answer_tokens": r.answer_tokens, "drafter_nfe": r.drafter_nfe, "drafter_s": r.drafter_s,
                     "injected": r.injected, "confirmed": r.confirmed, "revoked": r.revoked, "edited": r.edited,
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


def summary_header(identity: dict[str, Any], world: int, drafter_load_s: float | None = None) -> dict[str, Any]:
    """The fields of summary.json besides the scores: the run's identity, its process count and machine,
    and with a drafter the one-time seconds of loading it (``drafter_load_s``: transformers' import
    included where the load needed it; never part of a problem's time)."""
    extra = {} if drafter_load_s is None else {"drafter_load_s": drafter_load_s}
    return {**identity, "num_processes": world, **extra, "environment": environment()}


def drafter_cost(s: dict[str, Any]) -> str:
    """The drafter's part of a summary in words: forwards, its seconds against the diffusion model's
    of the same problems, and its one-time load apart."""
    load = f", load {s['drafter_load_s']:.2f}s once" if "drafter_load_s" in s else ""
    return (f"drafter NFE {s['drafter_nfe_mean']:.2f} | drafter {s.get('drafter_s', 0.0):.2f}s vs model "
            f"{s['model_s']:.2f}s{load}")


def model_label(s: dict[str, Any]) -> str:
    """The model of a summary or bench result, with its weight quantization when it has one."""
    return s["model"] + (f" ({s['quantize']})" if s.get("quantize") else "")


def one_line(s: dict[str, Any]) -> str:
    """The summary printed at the end; wall time is end to end (a drafter's per-problem time inside it)."""
    lo, hi = s["accuracy_ci95"]
    return (f"{s['task']} {model_label(s)} {s['strategy']}: accuracy {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"on {s['n']} | NFE {s['nfe_mean']:.2f} | tokens/forward {s['tokens_per_forward']:.2f} | "
            + (f"{drafter_cost(s)} | " if s.get("config", {}).get("drafter") else "")
            + f"wall {s['wall_s']:.1f}s (model {s['model_s']:.1f}s)")
