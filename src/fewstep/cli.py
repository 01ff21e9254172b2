"""The ``fewstep`` command line: generate, eval, train.

Errors that fewstep raises on purpose (bad configuration, unknown model, prompt too long, ...)
are printed as one line ``fewstep: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Sequence

from fewstep.errors import FewstepError


def _add_model_args(p: argparse.ArgumentParser, default_model: str = "tiny-dlm") -> None:
    p.add_argument("--model", default=default_model, help="bundled name (tiny-dlm, tiny-ar) or model directory")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: llada; ar for causal models)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a decode setting, e.g. --set steps=6 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: as stored)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description="Decode masked diffusion LMs in fewer steps.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one prompt")
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--stats", action="store_true", help="also print NFE and tokens per forward (to stderr)")

    e = sub.add_parser("eval", help="evaluate a model and strategy on a task")
    e.add_argument("--task", required=True)
    _add_model_args(e)
    e.add_argument("--limit", type=int, default=None, help="first N problems only")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--out", required=True, help="result directory (summary.json, samples.jsonl)")
    e.add_argument("--data", default=None, help="task data as JSONL in the task's own field layout")
    e.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", help="train a lab model (resumes from --out when interrupted)")
    from fewstep.training.config import TrainConfig

    for f in fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str, "bool": lambda s: s.lower() in ("1", "true", "yes")}[str(f.type)]
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f"(default {f.default})")
    t.add_argument("--out", required=True, help="run directory (checkpoints, log, snapshots, final/)")
    t.add_argument("--export", default=None, help="also save the final model to this directory")
    t.add_argument("--no-progress", action="store_true")
    return parser


def _generate(args: argparse.Namespace) -> int:
    from fewstep.decoding.generate import generate
    from fewstep.evaluation.runner import resolve_config
    from fewstep.models.loading import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    cfg = resolve_config(model, args.strategy, args.settings)
    [result] = generate(model, [args.prompt], cfg)
    print(result.text)
    if args.stats:
        print(f"nfe={result.nfe} answer_tokens={result.answer_tokens} "
              f"tokens_per_forward={result.tokens_per_forward:.2f}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fewstep.evaluation.runner import EvalRequest, one_line, run_eval

    req = EvalRequest(task=args.task, model=args.model, out=args.out, strategy=args.strategy, limit=args.limit,
                      batch_size=args.batch_size, settings=tuple(args.settings), data=args.data,
                      device=args.device, dtype=args.dtype)
    print(one_line(run_eval(req, progress=not args.no_progress)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from fewstep.training.config import TrainConfig
    from fewstep.training.loop import export, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    final = train(cfg, args.out, progress=not args.no_progress)
    if args.export:
        export(cfg, final, args.export)
    print(f"trained {cfg.kind} for {cfg.steps} steps: {final}" + (f" (exported to {args.export})" if args.export else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "eval": _eval, "train": _train}[args.command](args)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewstep: interrupted (results so far are saved; run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
