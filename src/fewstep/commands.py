"""What each ``fewstep`` command does, once :mod:`fewstep.cli` has parsed its arguments: load the
model, resolve the configuration, run the engine, evaluation, training or the server, and print.
Heavy imports (torch, transformers, the evaluation stack) happen inside each command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from fewstep.errors import ConfigError, FewstepError


def settings_of(args: argparse.Namespace) -> list[str]:
    """--set values, with --drafter as drafter=... (the warm-start settings a drafter brings, init=inject
    and the model's recommendation, come from :func:`fewstep.config.resolve_config`)."""
    settings = list(args.settings)
    if getattr(args, "drafter", None):
        settings.append(f"drafter={args.drafter}")
    return settings


def allow_unsafe_exec(args: argparse.Namespace) -> None:
    """--unsafe-exec reaches the sandbox (and spawned workers) through the environment."""
    if getattr(args, "unsafe_exec", False):
        import os

        from fewstep.sandbox.jail import UNSAFE_ENV

        os.environ[UNSAFE_ENV] = "1"


def generate_command(args: argparse.Namespace) -> int:
    from fewstep.config import resolve_config
    from fewstep.models.loading import load_lab_model, load_model

    if args.trace and Path(args.trace).exists() and not Path(args.trace).is_dir():
        raise ConfigError(f"--trace {args.trace} exists and is not a directory")
    # a bundled lab model loads without transformers (start-up: README "Start-up time")
    lab = None if args.quantize else load_lab_model(args.model, device=args.device, dtype=args.dtype)
    model = lab or load_model(args.model, device=args.device, dtype=args.dtype,
                              trust_remote_code=args.trust_remote_code, quantize=args.quantize)
    set_threads(model, args.threads)
    cfg = resolve_config(model, args.strategy, settings_of(args))
    result, origin = decode_one(model, args.prompt, cfg, show=args.stream, steps=bool(args.stream or args.trace))
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
        if cfg.drafter and cfg.reject == "edit":
            drafter += f" edited={result.edited}"
        print(f"nfe={result.nfe} answer_tokens={result.answer_tokens} "
              f"tokens_per_forward={result.tokens_per_forward:.2f}{drafter}", file=sys.stderr)
    return 0


SMALL_MODEL = 50_000_000  # parameters: one prompt's matrix products are too small to share between threads


def set_threads(model, threads: int | None) -> None:
    """``--threads``, or the default: one thread for a small model on CPU (unless OMP_NUM_THREADS says
    otherwise). One prompt through tiny-dlm takes 0.2 ms per matrix product on one thread and 8 ms on
    two when the other core is busy (each product waits for the descheduled thread)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif model.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and \
            sum(p.numel() for p in model.module.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)


def decode_one(model, prompt: str, cfg, show: bool, steps: bool):
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


def serve_command(args: argparse.Namespace) -> int:
    from fewstep.models.loading import BUNDLED, load_model

    try:
        from fewstep.serve.requests import Limits, ServerConfig
        from fewstep.serve.server import serve
    except ImportError as e:
        raise ConfigError(f"fewstep serve needs the serve extra (pip install 'fewstep[serve]'): {e}") from None
    if args.timeout <= 0 or args.max_wait_ms < 0:
        raise ConfigError("--timeout must be > 0 and --max-wait-ms >= 0")
    model = load_model(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    settings = settings_of(args)
    if args.drafter:  # loaded before the first request, so that no request's latency holds the load
        from fewstep.config import resolve_config
        from fewstep.evaluation.runner import preload_drafter

        preload_drafter(model, resolve_config(model, args.strategy, settings))
    drafters = tuple(dict.fromkeys([n for n in BUNDLED if n == "tiny-ar"] + ([args.drafter] if args.drafter else [])))
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, timeout_s=args.timeout,
                    drafters=drafters)
    serve(model, ServerConfig(args.strategy, tuple(settings), limits), host=args.host, port=args.port,
          api_key=args.api_key, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          log_level=args.log_level)
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from fewstep.evaluation.bench import BenchRequest, run_bench, split_strategies

    req = BenchRequest(task=args.task, model=args.model, strategies=split_strategies(args.strategies), out=args.out,
                       limit=args.limit, batch_size=args.batch_size, repeats=args.repeats,
                       settings=tuple(settings_of(args)), data=args.data, device=args.device, dtype=args.dtype,
                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code, quantize=args.quantize)
    run_bench(req, progress=not args.no_progress)
    print((Path(args.out) / "bench.md").read_text(), end="")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """Evaluate and print the one-line summary (once, from rank 0, when several processes run)."""
    from fewstep.evaluation.runner import EvalRequest, run_eval
    from fewstep.evaluation.summary import one_line
    from fewstep.parallel import is_main_process

    req = EvalRequest(task=args.task, model=args.model, out=args.out, strategy=args.strategy, limit=args.limit,
                      batch_size=args.batch_size, settings=tuple(settings_of(args)), data=args.data,
                      device=args.device, dtype=args.dtype, num_processes=args.num_processes,
                      overwrite=args.overwrite, trust_remote_code=args.trust_remote_code, quantize=args.quantize)
    summary = run_eval(req, progress=not args.no_progress)
    if is_main_process():
        print(one_line(summary))
    return 0


def list_command(args: argparse.Namespace) -> int:
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


def train_command(args: argparse.Namespace) -> int:
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


def distill_command(args: argparse.Namespace) -> int:
    from fewstep.parallel import is_main_process
    from fewstep.training.config import DistillConfig
    from fewstep.training.distill import distill, export

    cfg = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    if args.plan:
        return _print_plan(cfg, args)
    if not args.out:
        raise ConfigError("distill needs --out (the run directory), unless --plan")
    result = distill(cfg, args.out, progress=not args.no_progress, stop_at=args.stop_at)
    if is_main_process():
        if args.export:
            export(result, args.export)
        exported = f" (exported to {args.export})" if args.export else ""
        print(f"distilled {cfg.teacher} ({cfg.objective}): {result}{exported}")
    return 0


def rollouts_command(args: argparse.Namespace) -> int:
    from fewstep.parallel import is_main_process
    from fewstep.training.rollouts import RolloutConfig, write_rollouts

    rc = RolloutConfig(**{f.name: getattr(args, f.name) for f in fields(RolloutConfig)})
    done = write_rollouts(rc, args.out, progress=not args.no_progress)
    if is_main_process():
        print(f"rolled out {rc.teacher} ({rc.strategy}) on {done['steps']} steps into {args.out}: "
              f"{done['nfe']} teacher forwards, {done['seconds']:.1f} s")
    return 0


def _print_plan(cfg, args: argparse.Namespace) -> int:
    """``fewstep distill --plan``: one JSON object, the memory per device (fewstep.training.plan)."""
    import json

    from fewstep.parallel import ALONE, launched
    from fewstep.training.plan import plan_for

    devices = args.plan_devices or (launched() or ALONE).world
    print(json.dumps(plan_for(cfg, devices, args.plan_prompt_length)))
    return 0
