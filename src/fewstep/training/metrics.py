"""``metrics.jsonl`` and ``loss.png`` of a ``fewstep distill`` run: the log appended as it trains, cut
back to the checkpoint's step on resume, and plotted at every validation."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from fewstep.errors import ResultsError
from fewstep.files import atomic_save, atomic_write_jsonl, read_jsonl


class MetricsLog:
    """``metrics.jsonl`` open for appending on the main process (other processes write nothing)."""

    def __init__(self, path: Path, main: bool):
        self.path = path
        self._file = open(path, "a") if main else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    rows = read_jsonl(path, required=("step",), torn_tail=True, error=ResultsError)
    atomic_write_jsonl(path, [r for r in rows if r["step"] <= step])


def _smooth(xs: list[float], window: int = 20) -> list[float]:
    """Trailing mean over up to ``window`` values."""
    sums = [0.0, *itertools.accumulate(xs)]
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(xs))]


def plot_metrics(log: Path, out: Path) -> None:
    """loss.png: training loss (and its KL / CE parts) and validation loss against the step; for
    DSCD, on a second axis, the fractions of KL and CE terms clipped (no gradient through them)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is the `plot` extra
        return
    rows = read_jsonl(log, torn_tail=True, error=ResultsError)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in train]
    for key, style in (("loss", "-"), ("kl", ":"), ("ce", "--")):
        if train and any(r[key] for r in train):
            ax.plot(steps, _smooth([r[key] for r in train]), style, lw=1, label=f"train {key} (mean of 20)")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    if train and all("kl_clipped" in r for r in train):
        ax2 = ax.twinx()
        for key, style in (("kl_clipped", "r:"), ("ce_clipped", "m--")):
            ax2.plot(steps, _smooth([r[key] for r in train]), style, lw=1, label=f"{key} (fraction)")
        ax2.set_ylabel("fraction of terms clipped")
        ax2.set_ylim(0, max(0.05, *(r["kl_clipped"] for r in train), *(r["ce_clipped"] for r in train)) * 1.1)
        ax2.legend(loc="lower left")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
