"""The ``fewstep`` command line: generate (with --stream / --trace), eval, bench, train.

Errors that fewstep raises on purpose (bad configuration, unknown model, prompt too long, ...)
are printed as one line ``fewstep: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from fewstep.errors import FewstepError


def _add_model_args(p: argparse.ArgumentParser, default_model: str = "tiny-dlm") -> None:
    p.add_argument("--model", default=default_model, help="bundled name (tiny-dlm, tiny-ar) or model directory")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: llada; ar for causal models)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a decode setting, e.g. --set steps=6 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: as stored)")


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def _add_fields(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a config dataclass (``--field-name``), its default the field's."""
    kinds: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "bool": _flag}
    for f in fields(cls):
        kind = kinds[str(f.type)]
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f"(default {f.default})")


def _add_run_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options of a resumable training run: its directory, the export, an early stop, no progress bar."""
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--export", default=None, help="also save the trained model to this directory")
    p.add_argument("--stop-at", type=int, default=None,
                   help="end at this step, keeping the schedules of --steps (a later run without it continues)")
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description="Decode masked diffusion LMs in fewer steps.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one prompt")
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--stats", action="store_true", help="also print NFE and tokens per forward (to stderr)")
    g.add_argument("--stream", action="store_true", help="redraw the canvas at every step as it fills in")
    g.add_argument("--trace", metavar="DIR", default=None,
                   help="write trace.png and trace.html (the step at which each token was committed) to DIR")

    b = sub.add_parser("bench", help="compare strategies side by side on a task")
    b.add_argument("--task", required=True)
    b.add_argument("--model", default="tiny-dlm")
    b.add_argument("--strategies", required=True,
                   help='";"-separated specs, e.g. "llada;threshold:threshold=0.9;cad:tau=0.95,min_tokens=1"')
    b.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a decode setting applied to every strategy (repeatable)")
    b.add_argument("--limit", type=int, default=None)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    b.add_argument("--out", required=True)
    b.add_argument("--data", default=None)
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", default=None)
    b.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="evaluate a model and strategy on a task",
                       description="Evaluate a model and strategy on a task. --model gold answers every problem "
                                   "with its reference solution, to check a task's pipeline end to end.")
    e.add_argument("--task", required=True)
    _add_model_args(e)
    e.add_argument("--limit", type=int, default=None, help="first N problems only")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--out", required=True, help="result directory (summary.json, samples.jsonl)")
    e.add_argument("--data", default=None, help="task data as JSONL in the task's own field layout")
    e.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="shard the problems over N processes (gloo) and merge the results; under torchrun / "
                        "accelerate launch the launcher's processes are used instead")
    e.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", help="train a lab model (resumes from --out when interrupted)")
    from fewstep.training.config import DistillConfig, TrainConfig

    _add_fields(t, TrainConfig)
    _add_run_args(t, "run directory (checkpoints, log, snapshots, final/)")

    d = sub.add_parser("distill", help="distil a diffusion model into a few-step student (DSCD; resumable)",
                       description="CD4LM discrete-space consistency distillation. Defaults are the paper's; "
                                   "runs unchanged under torchrun / accelerate launch (data parallel).")
    _add_fields(d, DistillConfig)
    _add_run_args(d, "run directory (checkpoint.pt, metrics.jsonl, loss.png, best/, last/)")
    return parser


def _generate(args: argparse.Namespace) -> int:
    from fewstep.decoding.generate import generate
    from fewstep.config import resolve_config
    from fewstep.models.loading import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    cfg = resolve_config(model, args.strategy, args.settings)
    if args.stream and model.kind == "diffusion":
        result = _stream(model, args.prompt, cfg)
    else:
        [result] = generate(model, [args.prompt], cfg)
    print(result.text)
    if args.trace:
        from fewstep.trace import write_trace

        paths = write_trace(model, args.prompt, result.token_ids, result.committed_at, result.nfe,
                            cfg.strategy, args.trace)
        print("trace: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    if args.stats:
        print(f"nfe={result.nfe} answer_tokens={result.answer_tokens} "
              f"tokens_per_forward={result.tokens_per_forward:.2f}", file=sys.stderr)
    return 0


def _stream(model, prompt: str, cfg):
    """Decode one prompt, redrawing the canvas after every step (one line per step off a terminal)."""
    from fewstep.decoding.generate import results_from_event
    from fewstep.decoding.loop import decode
    from fewstep.trace import render_canvas

    tty = sys.stderr.isatty()
    event = None
    for event in decode(model, [model.encode_prompt(prompt)], cfg):
        line = f"step {event.step + 1:>3} nfe {int(event.nfe[0]):>3} | {render_canvas(model, event.canvas[0].tolist())}"
        print(("\r\x1b[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    assert event is not None
    return results_from_event(model, event)[0]


def _bench(args: argparse.Namespace) -> int:
    from fewstep.evaluation.bench import BenchRequest, run_bench, split_strategies

    req = BenchRequest(task=args.task, model=args.model, strategies=split_strategies(args.strategies), out=args.out,
                       limit=args.limit, batch_size=args.batch_size, repeats=args.repeats,
                       settings=tuple(args.settings), data=args.data, device=args.device, dtype=args.dtype)
    run_bench(req, progress=not args.no_progress)
    print((Path(args.out) / "bench.md").read_text(), end="")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Evaluate and print the one-line summary (once, from rank 0, when several processes run)."""
    from fewstep.evaluation.distributed import is_main_process
    from fewstep.evaluation.runner import EvalRequest, one_line, run_eval

    req = EvalRequest(task=args.task, model=args.model, out=args.out, strategy=args.strategy, limit=args.limit,
                      batch_size=args.batch_size, settings=tuple(args.settings), data=args.data,
                      device=args.device, dtype=args.dtype, num_processes=args.num_processes)
    summary = run_eval(req, progress=not args.no_progress)
    if is_main_process():
        print(one_line(summary))
    return 0


def _train(args: argparse.Namespace) -> int:
    from fewstep.training.config import TrainConfig
    from fewstep.training.loop import export, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    final = train(cfg, args.out, progress=not args.no_progress, stop_at=args.stop_at)
    if args.export:
        export(cfg, final, args.export)
    exported = f" (exported to {args.export})" if args.export else ""
    print(f"trained {cfg.kind} for {args.stop_at or cfg.steps} of {cfg.steps} steps: {final}{exported}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from fewstep.evaluation.distributed import is_main_process
    from fewstep.training.config import DistillConfig
    from fewstep.training.distill import distill, export

    cfg = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    result = distill(cfg, args.out, progress=not args.no_progress, stop_at=args.stop_at)
    if is_main_process():
        if args.export:
            export(result, args.export)
        exported = f" (exported to {args.export})" if args.export else ""
        print(f"distilled {cfg.teacher} ({cfg.objective}): {result}{exported}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "eval": _eval, "bench": _bench, "train": _train,
                "distill": _distill}[args.command](args)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewstep: interrupted (results so far are saved; run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
