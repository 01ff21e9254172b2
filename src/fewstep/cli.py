"""The ``fewstep`` command line: generate (with --stream / --trace), eval, bench, train, list, serve, lm-eval.

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
from pathlib import Path
from typing import Any

from fewstep.config import check_settings
from fewstep.errors import ConfigError, FewstepError


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
    p.add_argument("--dtype", default=None, help="model dtype, e.g. float32 or bfloat16 (default: as stored)")
    _add_trust_remote_code(p)
    _add_drafter_arg(p)


def _add_trust_remote_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run modelling / tokenizer code shipped in the model directory (never needed for LLaDA, "
                        "Dream or architectures transformers knows)")


def _add_drafter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drafter", default=None, metavar="NAME_OR_PATH",
                   help="warm start from this causal LM's answer (bundled tiny-ar or a directory); same as --set "
                        "drafter=...; with no --set init=..., injects its draft (init=inject)")


def _settings(args: argparse.Namespace) -> list[str]:
    """--set values, with --drafter as drafter=... (and init=inject unless an init is set)."""
    settings = list(args.settings)
    if getattr(args, "drafter", None):
        settings.append(f"drafter={args.drafter}")
        if not any(s.split("=", 1)[0].strip() == "init" for s in settings):
            settings.append("init=inject")
    return settings


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


def _allow_unsafe_exec(args: argparse.Namespace) -> None:
    """--unsafe-exec reaches the sandbox (and spawned workers) through the environment."""
    if getattr(args, "unsafe_exec", False):
        import os

        from fewstep.sandbox.jail import UNSAFE_ENV

        os.environ[UNSAFE_ENV] = "1"


def _add_fields(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a config dataclass (``--field-name``), its default the field's."""
    for f in fields(cls):
        kind = _TRAIN_TYPES[str(f.type)]
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f"(default {f.default})")


def _add_run_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options of a resumable training run: its directory, the export, an early stop, no progress bar."""
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--export", default=None, help="also save the trained model to this directory")
    p.add_argument("--stop-at", type=_count, default=None,
                   help="end at this step, keeping the schedules of --steps (a later run without it continues)")
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    from fewstep import __version__

    parser = _Parser(prog="fewstep", description="Decode masked diffusion LMs in fewer steps.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="answer one prompt")
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--stats", action="store_true", help="also print NFE and tokens per forward (to stderr)")
    g.add_argument("--stream", action="store_true", help="redraw the canvas at every step as it fills in")
    g.add_argument("--trace", metavar="DIR", default=None,
                   help="write trace.png and trace.html (the step at which each token was committed) to DIR")
    g.add_argument("--threads", type=_count, default=None, metavar="N",
                   help="CPU threads for the model (default: 1 for a model under 50M parameters on CPU, where "
                        "a second thread only adds waiting, unless OMP_NUM_THREADS is set; else torch's default)")

    b = sub.add_parser("bench", help="compare strategies side by side on a task")
    b.add_argument("--task", required=True)
    b.add_argument("--model", default="tiny-dlm")
    b.add_argument("--strategies", required=True,
                   help='";"-separated specs, e.g. "llada;threshold:threshold=0.9;cad:tau=0.95,min_tokens=1"')
    b.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a decode setting applied to every strategy (repeatable)")
    b.add_argument("--limit", type=_count, default=None)
    b.add_argument("--batch-size", type=_count, default=32)
    b.add_argument("--repeats", type=_count, default=3, help="timed repeats (median reported)")
    b.add_argument("--out", required=True)
    b.add_argument("--data", default=None)
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", default=None)
    _add_trust_remote_code(b)
    _add_drafter_arg(b)
    b.add_argument("--overwrite", action="store_true", help="remove the results already in --out instead of resuming")
    _add_unsafe_exec(b)
    b.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="evaluate a model and strategy on a task",
                       description="Evaluate a model and strategy on a task. --model gold answers every problem "
                                   "with its reference solution, to check a task's pipeline end to end.")
    e.add_argument("--task", required=True)
    _add_model_args(e)
    e.add_argument("--limit", type=_count, default=None, help="first N problems only")
    e.add_argument("--batch-size", type=_count, default=32)
    e.add_argument("--out", required=True, help="result directory (summary.json, samples.jsonl)")
    e.add_argument("--data", default=None, help="task data as JSONL in the task's own field layout")
    e.add_argument("--num-processes", type=_count, default=1, metavar="N",
                   help="shard the problems over N processes (gloo) and merge the results; under torchrun / "
                        "accelerate launch the launcher's processes are used instead")
    e.add_argument("--overwrite", action="store_true",
                   help="remove the results already in --out (of any run) instead of resuming them")
    _add_unsafe_exec(e)
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

    ls = sub.add_parser("list", help="list the tasks, the models (bundled ones and the architectures fewstep "
                        "implements), the decoding strategies (with their parameters) or the loop's settings")
    ls.add_argument("what", choices=("tasks", "models", "strategies", "settings"))
    ls.add_argument("--json", action="store_true", help="print the listing as JSON")
    ls.add_argument("--markdown", action="store_true", help="settings: the Markdown reference (docs/settings.md)")

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with request batching and a playground",
                        description="Serve a diffusion model over the OpenAI API (/v1/completions, "
                                    "/v1/chat/completions, streaming), with a live denoising playground at /. "
                                    "--strategy / --set are the server's defaults; a request may change them "
                                    "with its own strategy and settings fields. Needs the serve extra.")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=_count, default=8000)
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on every API request")
    sv.add_argument("--max-batch-size", type=_count, default=32, help="rows decoded together at most")
    sv.add_argument("--max-wait-ms", type=_finite, default=10.0,
                    help="a batch closes when no request has joined it for this long (or the oldest has waited "
                         "10 times this, or it is full)")
    sv.add_argument("--max-queue", type=_count, default=256, help="queued rows at most (then 429)")
    sv.add_argument("--max-tokens", type=_count, default=512, help="largest max_tokens (generation length) allowed")
    sv.add_argument("--max-prompt-tokens", type=_count, default=4096)
    sv.add_argument("--max-body-bytes", type=_count, default=1 << 20)
    sv.add_argument("--timeout", type=_finite, default=600.0, help="seconds per request, arrival to last byte")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    sub.add_parser("lm-eval", add_help=False,
                   help="lm-eval's command line with the fewstep model registered (all arguments passed through)")
    return parser


def _generate(args: argparse.Namespace) -> int:
    from fewstep.config import resolve_config
    from fewstep.models.loading import load_lab_model, load_model

    if args.trace and Path(args.trace).exists() and not Path(args.trace).is_dir():
        raise ConfigError(f"--trace {args.trace} exists and is not a directory")
    # a bundled lab model loads without transformers (start-up: README "Start-up time")
    model = load_lab_model(args.model, device=args.device, dtype=args.dtype) or \
        load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    _set_threads(model, args.threads)
    cfg = resolve_config(model, args.strategy, _settings(args))
    result, origin = _decode_one(model, args.prompt, cfg, show=args.stream, steps=bool(args.stream or args.trace))
    print(result.text)
    if args.trace:
        from fewstep.trace import write_trace

        spec = cfg.strategy + (f" + {cfg.init} from {cfg.drafter}" if cfg.drafter else "")
        paths = write_trace(model, args.prompt, result.token_ids, result.committed_at, result.nfe, spec, args.trace,
                            origin)
        print("trace: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    if args.stats:
        drafter = f" drafter_nfe={result.drafter_nfe} injected={result.injected} confirmed={result.confirmed} " \
                  f"revoked={result.revoked}" if cfg.drafter else ""
        print(f"nfe={result.nfe} answer_tokens={result.answer_tokens} "
              f"tokens_per_forward={result.tokens_per_forward:.2f}{drafter}", file=sys.stderr)
    return 0


SMALL_MODEL = 50_000_000  # parameters: one prompt's matrix products are too small to share between threads


def _set_threads(model, threads: int | None) -> None:
    """``--threads``, or the default: one thread for a small model on CPU (unless OMP_NUM_THREADS says
    otherwise). One prompt through tiny-dlm takes 0.2 ms per matrix product on one thread and 8 ms on
    two when the other core is busy (each product waits for the descheduled thread)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif model.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and \
            sum(p.numel() for p in model.module.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)


def _decode_one(model, prompt: str, cfg, show: bool, steps: bool):
    """Decode one prompt through the engine, redrawing the canvas after every step when ``show``
    (one line per step off a terminal); -> the result and, with ``steps``, each position's origin
    (the trace's colours)."""
    import torch

    from fewstep.engine import stream
    from fewstep.trace import origins, render_canvas

    tty = sys.stderr.isatty()
    update = None
    revoked = torch.zeros(cfg.gen_length, dtype=torch.bool)
    for update in stream(model, [prompt], cfg, snapshots=steps):
        if update.event is None:  # a causal model: one update, its result
            continue
        revoked |= update.event.revoked[0]
        if show:
            line = f"step {update.event.step + 1:>3} nfe {int(update.event.nfe[0]):>3} | " \
                   f"{render_canvas(model, update.event.canvas[0].tolist())}"
            print(("\r\x1b[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    if show and tty:
        print(file=sys.stderr)
    assert update is not None
    result = update.results()[0]
    if not steps or update.event is None:
        return result, None
    injected = update.injected()
    drafted = injected[0].tolist() if injected is not None else [-1] * cfg.gen_length
    return result, origins(drafted, revoked.tolist(), result.token_ids)


def _serve(args: argparse.Namespace) -> int:
    from fewstep.models.loading import BUNDLED, load_model

    try:
        from fewstep.serve.requests import Limits, ServerConfig
        from fewstep.serve.server import serve
    except ImportError as e:
        raise ConfigError(f"fewstep serve needs the serve extra (pip install 'fewstep[serve]'): {e}") from None
    if args.timeout <= 0 or args.max_wait_ms < 0:
        raise ConfigError("--timeout must be > 0 and --max-wait-ms >= 0")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    settings = _settings(args)
    drafters = tuple(dict.fromkeys([n for n in BUNDLED if n == "tiny-ar"] + ([args.drafter] if args.drafter else [])))
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, timeout_s=args.timeout,
                    drafters=drafters)
    serve(model, ServerConfig(args.strategy, tuple(settings), limits), host=args.host, port=args.port,
          api_key=args.api_key, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          log_level=args.log_level)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fewstep.evaluation.bench import BenchRequest, run_bench, split_strategies

    req = BenchRequest(task=args.task, model=args.model, strategies=split_strategies(args.strategies), out=args.out,
                       limit=args.limit, batch_size=args.batch_size, repeats=args.repeats,
                       settings=tuple(_settings(args)), data=args.data, device=args.device, dtype=args.dtype,
                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    run_bench(req, progress=not args.no_progress)
    print((Path(args.out) / "bench.md").read_text(), end="")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Evaluate and print the one-line summary (once, from rank 0, when several processes run)."""
    from fewstep.evaluation.runner import EvalRequest, run_eval
    from fewstep.evaluation.summary import one_line
    from fewstep.parallel import is_main_process

    req = EvalRequest(task=args.task, model=args.model, out=args.out, strategy=args.strategy, limit=args.limit,
                      batch_size=args.batch_size, settings=tuple(_settings(args)), data=args.data,
                      device=args.device, dtype=args.dtype, num_processes=args.num_processes,
                      overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    summary = run_eval(req, progress=not args.no_progress)
    if is_main_process():
        print(one_line(summary))
    return 0


def _list(args: argparse.Namespace) -> int:
    """Print a listing (``fewstep list tasks|models|strategies``), as a table or as JSON."""
    import json

    from fewstep import catalog

    rows, fmt = {
        "tasks": (catalog.task_rows, catalog.format_tasks),
        "models": (catalog.model_rows, catalog.format_models),
        "strategies": (catalog.strategy_rows, catalog.format_strategies),
        "settings": (catalog.setting_rows, catalog.format_settings),
    }[args.what]
    if args.markdown:
        if args.what != "settings":
            raise ConfigError("--markdown lists settings only (fewstep list settings --markdown)")
        print(catalog.settings_reference())
        return 0
    listing = rows()
    print(json.dumps(listing, indent=2, default=str) if args.json else fmt(listing), end="\n" if args.json else "")
    return 0


def lm_eval_command(argv: Sequence[str]) -> int:
    """``fewstep lm-eval ARGS``: lm-eval's command line (``ARGS`` untouched) with the model registered."""
    try:
        from fewstep.integrations import lm_eval
    except ImportError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    try:
        lm_eval.main(list(argv))
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # lm-eval's argparse exits (--help, bad arguments) keep their status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _train(args: argparse.Namespace) -> int:
    from fewstep.training.config import TrainConfig
    from fewstep.training.loop import check_export, export, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if args.export:
        check_export(args.out, args.export)
    final = train(cfg, args.out, progress=not args.no_progress, stop_at=args.stop_at)
    if args.export:
        export(cfg, final, args.export)
    exported = f" (exported to {args.export})" if args.export else ""
    print(f"trained {cfg.kind} for {args.stop_at or cfg.steps} of {cfg.steps} steps: {final}{exported}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from fewstep.parallel import is_main_process
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
    import os

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
        _allow_unsafe_exec(args)
        commands = {"generate": _generate, "eval": _eval, "bench": _bench, "train": _train, "list": _list,
                    "distill": _distill, "serve": _serve}
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
