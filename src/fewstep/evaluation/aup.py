"""AUP, *accuracy under parallelism*: d3LLM's one-number summary of an accuracy-parallelism curve.

Definition (Qian et al., "d3LLM: Ultra-Fast Diffusion LLM using Pseudo-Trajectory Distillation",
ICML 2026, the AUP definition of its evaluation section; also the blog post "AUP: when Accuracy
Meets Parallelism in Diffusion Language Models", hao-ai-lab, 2025). Given parallelism-accuracy
pairs ``S = {(rho_i, y_i)}, i = 1..m`` with ``rho_1 < rho_2 < ... < rho_m`` (``rho``: tokens per
forward, TPF) and ``y_i`` in ``[0, 100]`` (accuracy in percent), only the points with
``y_i >= y_min = y_1 - 5`` count, and::

    AUP = rho_1 * y_1 + 1/2 * sum_{i=2..m} (rho_i - rho_{i-1}) * (y_i * W(y_i) + y_{i-1} * W(y_{i-1}))

    W(y) = min(exp(-alpha * (1 - y / y_max)), 1),   alpha = 3,

with ``y_max`` the highest accuracy reached on the task (over every method compared). The first
term is unweighted, as in the equation. d3LLM's reference script additionally refuses a curve
whose last point lies more than 5 points below its first; the equation filters those points out
instead, and so does :func:`aup`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

ALPHA = 3.0
Y_MIN_OFFSET = 5.0


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """``W(y) = min(exp(-alpha (1 - y / y_max)), 1)``; 1 when ``y_max`` is 0 (then every ``y`` is 0 too)."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0)


def aup(points: Iterable[tuple[float, float]], y_max: float | None = None, alpha: float = ALPHA,
        y_min_offset: float = Y_MIN_OFFSET) -> float:
    """AUP of ``(tokens per forward, accuracy in percent)`` points, in any order (sorted by
    parallelism here; equal parallelism keeps the given order). ``y_max``: the best accuracy on
    the task, by default the best of ``points``."""
    pts = sorted(((float(r), float(y)) for r, y in points), key=lambda p: p[0])
    if not pts:
        raise ValueError("AUP needs at least one (parallelism, accuracy) point")
    if any(not r > 0 or not math.isfinite(r) for r, _ in pts):
        raise ValueError(f"AUP: every parallelism (tokens per forward) must be positive, got {[r for r, _ in pts]}")
    if any(not 0 <= y <= 100 for _, y in pts):
        raise ValueError(f"AUP: accuracies are percentages in [0, 100], got {[y for _, y in pts]}")
    top = max(y for _, y in pts) if y_max is None else y_max
    y_min = pts[0][1] - y_min_offset
    kept = [(r, y) for r, y in pts if y >= y_min]
    total = kept[0][0] * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (r1 - r0) * (y1 * weight(y1, top, alpha) + y0 * weight(y0, top, alpha))
    return total


def curve_name(row: dict[str, Any]) -> str:
    """The curve a bench row belongs to: its model, with its drafter where it has one."""
    drafter = row.get("config", {}).get("drafter")
    return str(row.get("model", "")) + (f" + {drafter}" if drafter else "")


def bench_aup(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """AUP per curve of a bench's rows (:func:`curve_name`: a model, or a model with a drafter),
    ``y_max`` being the best accuracy of the whole bench. Rows without forwards (tokens per forward
    0) are left out; a curve with no row left has no AUP."""
    usable = [r for r in rows if r.get("tokens_per_forward", 0) > 0]
    if not usable:
        return {}
    top = 100 * max(r["accuracy"] for r in usable)
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in usable:
        curves.setdefault(curve_name(r), []).append((r["tokens_per_forward"], 100 * r["accuracy"]))
    return {name: aup(pts, y_max=top) for name, pts in curves.items()}
