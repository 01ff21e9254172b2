"""``fewstep eval``: decode a task's problems, score them, and write results as they come.

``DIR/samples.jsonl`` gets one line per problem after each batch; ``DIR/summary.json`` is
rewritten after each batch from everything in samples.jsonl. Running the same command again
skips the problems already in samples.jsonl; a different task, model, strategy or decode
configuration in the same directory is refused.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError


@dataclass(frozen=True)
class EvalRequest:
    task: str
    model: str
    out: str
    strategy: str | None = None
    limit: int | None = None
    batch_size: int = 32
    settings: tuple[str, ...] = ()
    data: str | None = None
    device: str = "cpu"
    dtype: str | None = None


def resolve_config(model, strategy: str | None, settings: list[str] | tuple[str, ...]) -> DecodeConfig:
    """Defaults, then the model directory's decode defaults, then ``--set`` overrides."""
    from fewstep.config import override

    strategy = strategy or ("ar" if model.kind == "causal" else "llada")
    cfg = override(DecodeConfig(strategy=strategy), dict(model.decode_defaults))
    return override(cfg, list(settings))


def summarise(samples: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    from fewstep.evaluation.stats import wilson

    n = len(samples)
    correct = sum(bool(s["correct"]) for s in samples)
    nfe = sum(s["nfe"] for s in samples)
    lo, hi = wilson(correct, n)
    return {
        **header,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "nfe_mean": nfe / n if n else 0.0,
        "tokens_per_forward": sum(s["answer_tokens"] for s in samples) / nfe if nfe else 0.0,
        "drafter_nfe_mean": sum(s.get("drafter_nfe", 0) for s in samples) / n if n else 0.0,
        "wall_s": sum(s["wall_s"] for s in samples),
        "model_s": sum(s["model_s"] for s in samples),
    }


def sample_rows(task, batch, results, wall: float, model_s: float) -> list[dict[str, Any]]:
    """One samples.jsonl row per problem: output, score, cost (batch time split evenly)."""
    rows = []
    for e, r in zip(batch, results):
        sc = task.score(e, r.text)
        rows.append({"id": e.id, "prompt": e.prompt, "output": r.text, "reference": e.reference,
                     "extracted": sc.extracted, "correct": sc.correct, "nfe": r.nfe,
                     "answer_tokens": r.answer_tokens, "drafter_nfe": r.drafter_nfe,
                     "wall_s": wall / len(batch), "model_s": model_s / len(batch)})
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


def run_eval(req: EvalRequest, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from fewstep.decoding.generate import generate
    from fewstep.evaluation.timing import ForwardTimer
    from fewstep.models.loading import load_model
    from fewstep.tasks.base import get_task

    if req.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {req.batch_size}")
    if req.limit is not None and req.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {req.limit}")
    task = get_task(req.task)
    examples = task.examples(req.data)
    if req.limit is not None:
        examples = examples[: req.limit]
    model = load_model(req.model, device=req.device, dtype=req.dtype)
    cfg = resolve_config(model, req.strategy, req.settings)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"task": req.task, "model": req.model, "strategy": cfg.strategy, "config": cfg.to_dict(),
              "data": req.data, "batch_size": req.batch_size}
    summary_path, samples_path = out / "summary.json", out / "samples.jsonl"
    if summary_path.exists():
        old = json.loads(summary_path.read_text())
        if {k: old.get(k) for k in header} != header:
            raise ConfigError(f"{out} holds results of a different run (task, model or configuration); use another --out")
    done = read_samples(samples_path)
    done_ids = {s["id"] for s in done}
    # Rewrite the file from the parsed rows so a cut-off last line does not survive.
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in done))
    todo = [e for e in examples if e.id not in done_ids]
    header["environment"] = environment()
    timer = ForwardTimer()
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), disable=not progress,
               desc=f"{req.task} {cfg.strategy}", unit="problem")
    samples = list(done)
    with open(samples_path, "a") as f, timer.attach(model.module):
        for i in range(0, len(todo), req.batch_size):
            batch = todo[i: i + req.batch_size]
            t0, m0 = time.perf_counter(), timer.seconds
            results = generate(model, [e.prompt for e in batch], cfg)
            wall, model_s = time.perf_counter() - t0, timer.seconds - m0
            for row in sample_rows(task, batch, results, wall, model_s):
                f.write(json.dumps(row, default=str) + "\n")
                samples.append(row)
            f.flush()
            summary = summarise(samples, header)
            write_json(summary_path, summary)
            bar.update(len(batch))
            bar.set_postfix(acc=f"{summary['accuracy']:.3f}", nfe=f"{summary['nfe_mean']:.1f}")
    bar.close()
    summary = summarise(samples, header)
    write_json(summary_path, summary)
    return summary


def one_line(s: dict[str, Any]) -> str:
    lo, hi = s["accuracy_ci95"]
    return (f"{s['task']} {s['model']} {s['strategy']}: accuracy {s['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"on {s['n']} | NFE {s['nfe_mean']:.2f} | tokens/forward {s['tokens_per_forward']:.2f} | "
            f"drafter NFE {s['drafter_nfe_mean']:.2f} | wall {s['wall_s']:.1f}s (model {s['model_s']:.1f}s)")
