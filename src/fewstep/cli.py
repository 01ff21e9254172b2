"""The ``fewstep`` command line: its parser and dispatch (the commands themselves: :mod:`fewstep.commands`).

Errors that fewstep raises on purpose (bad configuration, unknown model, prompt too long, ...)
are printed as one line ``fewstep: error: ...`` with exit status 2.

``fewstep lm-eval ARGS`` is lm-eval's own command line with the ``fewstep`` model registered: lm-eval
finds no models of other packages by itself (see :mod:`fewstep.integrations.lm_eval`), so every
argument after ``lm-eval`` goes to it untouched.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from fewstep.commands import (
    allow_unsafe_exec,
    bench_command,
    distill_command,
    eval_command,
    generate_command,
    list_command,
    lm_eval_command,
    rollouts_command,
    serve_command,
    train_command,
)
from fewstep.config import check_settings
from fewstep.errors import FewstepError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line ``fewstep: error: ...`` (exit status 2) like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("fewstep").strip()
        print(f"fewstep: error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        raise SystemExit(2)


def _parsed(text: str, parse: Callable[[str], Any], what: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}") from None


def _count(text: str) -> int:
    """A positive integer argument."""
    value = _parsed(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite(text: str) -> float:
    """A finite float argument (NaN and infinities are refused)."""
    value = _parsed(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _int64(text: str) -> int:
    """An integer argument that fits in 64 bits."""
    value = _parsed(text, int, "an integer")
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"does not fit in 64 bits: {text}")
    return value


def _add_model_args(p: argparse.ArgumentParser, default_model: str = "tiny-dlm") -> None:
    p.add_argument("--model", default=default_model, help="bundled name (tiny-dlm, tiny-ar) or model directory")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: llada; ar for causal models)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a decode setting, e.g. --set steps=6 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: as stored on an "
                                                  "accelerator, float32 on the CPU)")
    _add_quantize(p)
    _add_trust_remote_code(p)
    _add_drafter_arg(p)


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", default=None, choices=("int8", "nf4", "int4"),
                   help="weight-only quantization of the model and any drafter (torchao): int8 on any device, "
                        "nf4 / int4 on CUDA only (default: none)")


def _add_trust_remote_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run modelling / tokenizer code shipped in the model directory (never needed for LLaDA, "
                        "Dream or architectures transformers knows)")


def _add_drafter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drafter", default=None, metavar="NAME_OR_PATH",
                   help="warm start from this causal LM's answer (bundled tiny-ar or a directory); same as --set "
                        "drafter=...; with no --set init=..., injects its draft (init=inject)")


_NO_PROGRESS = "no progress bar (for logs and scripts)"


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expects true or false, got {text!r}")


_TRAIN_TYPES: dict[str, Callable[[str], Any]] = {"int": _int64, "float": _finite, "str": str, "bool": _flag}


def _add_unsafe_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unsafe-exec", action="store_true",
                   help="where no kernel sandbox can be made (no user namespaces), run model-written code with "
                        "process limits only: it can then read and change your files")


def _add_fields(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a config dataclass (``--field-name``), its default the field's."""
    for f in fields(cls):
        kind = _TRAIN_TYPES[str(f.type)]
        text = f.metadata.get("help", "")
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       help=f"{text} (default {f.default})" if text else f"(default {f.default})")


def _add_run_args(p: argparse.ArgumentParser, out_help: str, out_required: bool = True) -> None:
    """The options of a resumable training run: its directory, the export, an early stop, no progress bar."""
    p.add_argument("--out", required=out_required, help=out_help)
    p.add_argument("--export", default=None, help="also save the trained model to this directory")
    p.add_argument("--stop-at", type=_count, default=None,
                   help="end at this step, keeping the schedules of --steps (a later run without it continues)")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)


def _parser() -> argparse.ArgumentParser:
    from fewstep import __version__

    parser = _Parser(prog="fewstep", description="Decode masked diffusion LMs in fewer steps.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="answer one prompt")
    g.add_argument("prompt", help="the question, as plain text (the model's chat template is applied when it has one)")
    _add_model_args(g)
    g.add_argument("--stats", action="store_true", help="also print NFE and tokens per forward (to stderr)")
    g.add_argument("--stream", action="store_true", help="redraw the canvas at every step as it fills in")
    g.add_argument("--trace", metavar="DIR", default=None,
                   help="write trace.png and trace.html (the step at which each token was committed) to DIR")
    g.add_argument("--threads", type=_count, default=None, metavar="N",
                   help="CPU threads for the model (default: 1 for a model under 50M parameters on CPU, where "
                        "a second thread only adds waiting, unless OMP_NUM_THREADS is set; else torch's default)")

    _add_bench(sub)
    e = sub.add_parser("eval", help="evaluate a model and strategy on a task",
                       description="Evaluate a model and strategy on a task. --model gold answers every problem "
                                   "with its reference solution, to check a task's pipeline end to end.")
    e.add_argument("--task", required=True, help="the task to evaluate on (fewstep list tasks)")
    _add_model_args(e)
    e.add_argument("--limit", type=_count, default=None, help="first N problems only")
    e.add_argument("--batch-size", type=_count, default=32, help="problems decoded together (default: 32)")
    e.add_argument("--out", required=True, help="result directory (summary.json, samples.jsonl)")
    e.add_argument("--data", default=None, help="task data as JSONL in the task's own field layout")
    e.add_argument("--num-processes", type=_count, default=1, metavar="N",
                   help="shard the problems over N processes (gloo) and merge the results; under torchrun / "
                        "accelerate launch the launcher's processes are used instead")
    e.add_argument("--overwrite", action="store_true",
                   help="remove the results already in --out (of any run) instead of resuming them")
    _add_unsafe_exec(e)
    e.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)

    t = sub.add_parser("train", help="train a lab model (resumes from --out when interrupted)")
    from fewstep.training.config import DistillConfig, TrainConfig

    _add_fields(t, TrainConfig)
    _add_run_args(t, "run directory (checkpoints, log, snapshots, final/)")

    d = sub.add_parser("distill", help="distil a diffusion model into a few-step student (DSCD; resumable)",
                       description="CD4LM discrete-space consistency distillation. Defaults are the paper's; "
                                   "runs unchanged under torchrun / accelerate launch (data parallel).")
    _add_fields(d, DistillConfig)
    _add_run_args(d, "run directory (checkpoint.pt, metrics.jsonl, loss.png, best/, last/)", out_required=False)
    d.add_argument("--plan", action="store_true",
                   help="print the memory plan per device as JSON (from the teacher's config.json only) and exit")
    d.add_argument("--plan-devices", type=_count, default=None, metavar="N",
                   help="--plan: the number of processes (default: the launcher's, else 1)")
    d.add_argument("--plan-prompt-length", type=_count, default=256, metavar="TOKENS",
                   help="--plan: prompt tokens assumed per row (default 256)")

    r = sub.add_parser("rollouts", help="write the teacher's decoding trajectories for distill --objective trajectory "
                       "--rollouts (resumable; sharded over a launcher's processes)",
                       description="Roll the teacher out, with any strategy, on every training step of the distill "
                                   "run with the same teacher, data, seed, --steps, --batch-size, --val-size and "
                                   "--gen-length; each step's forwards and seconds are stored and count in the "
                                   "distill run's cost.")
    from fewstep.training.rollouts import RolloutConfig

    _add_fields(r, RolloutConfig)
    r.add_argument("--out", required=True, help="rollout directory (rollouts.json, shard-R-of-N/step-*.pt)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    ls = sub.add_parser("list", help="list the tasks, the models (bundled ones and the architectures fewstep "
                        "implements), the decoding strategies (with their parameters) or the loop's settings")
    ls.add_argument("what", choices=("tasks", "models", "strategies", "settings"), help="what to list")
    ls.add_argument("--json", action="store_true", help="print the listing as JSON")
    ls.add_argument("--markdown", action="store_true", help="settings: the Markdown reference (docs/settings.md)")

    _add_serve(sub)
    sub.add_parser("lm-eval", add_help=False,
                   help="lm-eval's command line with the fewstep model registered (all arguments passed through)")
    return parser


def _add_bench(sub: Any) -> None:
    """``fewstep bench``: strategies (and models) side by side on a task."""
    b = sub.add_parser("bench", help="compare strategies side by side on a task")
    b.add_argument("--task", required=True, help="the task to measure on (fewstep list tasks)")
    b.add_argument("--model", default="tiny-dlm", help="bundled name or model directory (default: tiny-dlm)")
    b.add_argument("--strategies", required=True,
                   help='";"-separated specs, e.g. "llada;threshold:threshold=0.9;cad:tau=0.95,min_tokens=1"; a '
                        'spec may name its own model beside its settings (threshold:threshold=0.9,model=tiny-dlm-cd), '
                        'the others use --model')
    b.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a decode setting applied to every strategy (repeatable)")
    b.add_argument("--limit", type=_count, default=None, help="first N problems only")
    b.add_argument("--batch-size", type=_count, default=32, help="problems decoded together (default: 32)")
    b.add_argument("--repeats", type=_count, default=3, help="timed repeats (median reported)")
    b.add_argument("--out", required=True, help="result directory (bench.json, bench.md, pareto.png); rerun to resume")
    b.add_argument("--data", default=None, help="task data as JSONL in the task's own field layout")
    b.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    b.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: as stored on an "
                                                  "accelerator, float32 on the CPU)")
    _add_quantize(b)
    _add_trust_remote_code(b)
    _add_drafter_arg(b)
    b.add_argument("--overwrite", action="store_true", help="remove the results already in --out instead of resuming")
    _add_unsafe_exec(b)
    b.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)



def _add_serve(sub: Any) -> None:
    """``fewstep serve``: the OpenAI-compatible server."""
    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with request batching and a playground",
                        description="Serve a diffusion model over the OpenAI API (/v1/completions, "
                                    "/v1/chat/completions, streaming), with a live denoising playground at /. "
                                    "--strategy / --set are the server's defaults; a request may change them "
                                    "with its own strategy and settings fields. Needs the serve extra.")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=_count, default=8000, help="TCP port (default: 8000)")
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on every API request")
    sv.add_argument("--max-batch-size", type=_count, default=32, help="rows decoded together at most")
    sv.add_argument("--max-wait-ms", type=_finite, default=10.0,
                    help="a batch closes when no request has joined it for this long (or the oldest has waited "
                         "10 times this, or it is full)")
    sv.add_argument("--max-queue", type=_count, default=256, help="queued rows at most (then 429)")
    sv.add_argument("--max-tokens", type=_count, default=512, help="largest max_tokens (generation length) allowed")
    sv.add_argument("--max-prompt-tokens", type=_count, default=4096,
                    help="longest prompt accepted, in tokens (default: 4096; the model's context also bounds it)")
    sv.add_argument("--max-body-bytes", type=_count, default=1 << 20,
                    help="largest request body in bytes (default: 1 MiB; larger ones get 413)")
    sv.add_argument("--timeout", type=_finite, default=600.0, help="seconds per request, arrival to last byte")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="the server's log level (default: info)")



def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. As the process's entry point (``argv`` None: the ``fewstep``
    command, ``python -m fewstep.cli``), ``generate`` then ends the process at once, its output flushed,
    without the interpreter's teardown (tearing torch down alone takes about 0.45 s of CPU, a quarter
    of a one-prompt ``generate``; README "Start-up")."""
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if argv is None and sys.argv[1:2] == ["generate"]:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Flush the output and leave the process without running the interpreter's teardown."""

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["lm-eval"]:
        return lm_eval_command(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2, already printed as one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        check_settings([*getattr(args, "settings", []), getattr(args, "strategies", "")])
        allow_unsafe_exec(args)
        commands = {"generate": generate_command, "eval": eval_command, "bench": bench_command, "train": train_command,
                    "list": list_command, "distill": distill_command, "serve": serve_command,
                    "rollouts": rollouts_command}
        return commands[args.command](args)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine refused: a path of the wrong kind, no space left, ...
        where = f": {e.filename}" if e.filename else ""
        print(f"fewstep: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewstep: interrupted (results so far are saved; run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
