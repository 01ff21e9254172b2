"""``fewstep distill``: train a student from a frozen masked diffusion teacher with DSCD.

The student starts as a copy of the teacher (all weights, or LoRA adapters through peft); the
teacher is frozen in eval mode. Everything a run needs is in its output directory:

- ``distill_config.json``: the frozen :class:`~fewstep.training.config.DistillConfig`;
- ``checkpoint.pt``: student, optimiser, step and early-stopping state, rewritten atomically
  (temp file + rename) every ``save_every`` steps and at every validation;
- ``metrics.jsonl``: one line per logged step (loss, kl, ce, lambda, lr, grad norm) and per
  validation (val_loss, val_kl, val_ce); ``loss.png``: the curves;
- ``best/``: the student with the lowest validation loss, ``last/``: the student at the end, both in
  the teacher's Hugging Face layout (its config, tokenizer and generation_config.json, new weights);
- ``run.json``: the outcome (steps done, early stop, best validation loss, process count and the
  weights' SHA-256, which every process checked it agrees on).

Running the same command again resumes from the checkpoint: the examples and masks of step s are
a pure function of (seed, s), so a resumed run continues exactly as an uninterrupted one would.

Data parallel: under ``torchrun`` / ``accelerate launch`` (RANK / WORLD_SIZE set) each process
holds the teacher and a DistributedDataParallel student (gloo on CPU, nccl on CUDA). Every process
draws the step's whole batch and masks and computes its rows ``rank::world``; the loss is
normalised by the step's total masked-token count over all processes, so the gradient is the
one-process gradient whatever the process count and ``grad_accum``.

``objective="mdlm"`` trains the same student on the same data and schedule with the plain
masked-diffusion loss instead (no teacher): the ablation that tells distillation from more training.

This module runs the loop; its parts are :mod:`~fewstep.training.distill_data` (batches by step),
:mod:`~fewstep.training.student` (teacher, student, export), :mod:`~fewstep.training.distiller` (one
process's training step, validation and checkpoints) and :mod:`~fewstep.training.metrics` (log, plot).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import torch

from fewstep.errors import ConfigError, FewstepError
from fewstep.files import atomic_write_json
from fewstep.parallel import ALONE, Place, all_gather, barrier, broadcast, launched, process_group, rank_device
from fewstep.training import sharding
from fewstep.training.config import DistillConfig
from fewstep.training.distill_data import Dataset
from fewstep.training.distiller import Distiller
from fewstep.training.metrics import MetricsLog, plot_metrics, trim_log
from fewstep.training.plan import check_device_memory
from fewstep.training.student import weights_digest

CONFIG_FILE = "distill_config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Fields that may change between a run and its resumption (where it runs and how it exports, not what it computes).
RESUMABLE_CHANGES = ("device", "threads", "log_every", "save_dtype")


def check_config(cfg: DistillConfig, out: Path, place: Place) -> None:
    """Write the configuration beside a new run; refuse a directory that holds a different one."""
    path = out / CONFIG_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        mine = asdict(cfg)
        theirs = {f.name: saved.get(f.name, f.default) for f in fields(DistillConfig)}
        diff = [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]
        if diff:
            raise ConfigError(f"{out} holds a run with a different configuration "
                              f"({', '.join(f'{k}: {theirs[k]!r} there, {mine[k]!r} here' for k in diff[:3])}); "
                              f"use another --out")
    elif place.main:
        atomic_write_json(path, asdict(cfg), allow_nan=True)


def distill(cfg: DistillConfig, out_dir: str | os.PathLike, progress: bool = True, stop_at: int | None = None) -> Path:
    """Run (or resume) the distillation in ``out_dir``; returns the directory of the result
    (``best/`` when there is a validation set, else ``last/``).

    ``stop_at`` ends the run at that step keeping the schedules of ``cfg.steps`` (a later call
    without it continues the same run)."""
    end = cfg.steps if stop_at is None else stop_at
    if not 0 < end <= cfg.steps:
        raise ConfigError(f"stop_at must be in [1, steps={cfg.steps}], got {stop_at}")
    out = Path(out_dir)
    place = launched() or ALONE
    if place.world == 1:
        place = ALONE
    sharding.check_launcher(cfg)
    sharding.check_objective(cfg)
    check_device_memory(cfg, place.world, rank_device(cfg.device, place.local_rank))
    backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
    with process_group(backend) if place.world > 1 else nullcontext():
        run = _start(cfg, out, place)
        _train(run, out, end, progress)
        digest = _agreed_digest(run)
        result = _finish(run, out, digest)
        barrier(place)
        return result


def _start(cfg: DistillConfig, out: Path, place: Place) -> Distiller:
    """The run's directory checked (or created), teacher and student loaded, the checkpoint resumed."""
    if place.main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(place)
    check_config(cfg, out, place)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif place.world > 1 and not cfg.device.startswith("cuda"):
        torch.set_num_threads(1)
    run = Distiller(cfg, place, Dataset(cfg))
    if (out / CHECKPOINT).exists():
        run.load_checkpoint(out / CHECKPOINT)
    if place.main:
        trim_log(out / METRICS, run.state.step)
    return run


def _train(run: Distiller, out: Path, end: int, progress: bool) -> None:
    """Train up to step ``end`` (or an early stop), logging, validating and checkpointing as configured."""
    from tqdm import tqdm

    cfg, st = run.cfg, run.state
    log = MetricsLog(out / METRICS, run.place.main)
    bar = tqdm(total=cfg.steps, initial=st.step, disable=not (progress and run.place.main),
               desc=f"distill {cfg.objective}", unit="step")
    t0, elapsed0 = time.time(), st.elapsed_s

    def elapsed() -> float:
        return elapsed0 + time.time() - t0

    while st.step < end and not st.stopped_early:
        values = run.train_step(st.step)
        st.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lam=f"{values['lambda']:.2f}")
        if st.step % cfg.log_every == 0:
            log.write({"step": st.step, **values, "elapsed_s": elapsed()})
        if cfg.val_size and (st.step % cfg.val_every == 0 or st.step == cfg.steps):
            _validate(run, out, log)
            _checkpoint(run, out, elapsed)
        elif st.step % cfg.save_every == 0 or st.step == end:
            _checkpoint(run, out, elapsed)
    bar.close()
    log.close()


def _validate(run: Distiller, out: Path, log: MetricsLog) -> None:
    """Validate; keep the best student (``best/``), count validations without improvement, replot."""
    cfg, st = run.cfg, run.state
    v = run.validate()
    better = v["val_loss"] < st.best_val
    st.best_val, st.bad_vals = (v["val_loss"], 0) if better else (st.best_val, st.bad_vals + 1)
    st.stopped_early = bool(cfg.patience) and st.bad_vals >= cfg.patience
    log.write({"step": st.step, **v, "best": better, "stopped_early": st.stopped_early})
    if better:
        run.export(out / "best")
    if run.place.main:
        plot_metrics(log.path, out / "loss.png")


def _checkpoint(run: Distiller, out: Path, elapsed: Callable[[], float]) -> None:
    run.state.elapsed_s = elapsed()
    run.save_checkpoint(out / CHECKPOINT)
    barrier(run.place)


def _agreed_digest(run: Distiller) -> str:
    """The SHA-256 of the student's weights, checked to be the same on every process (under FSDP,
    of the gathered weights: rank 0's, the only whole copy)."""
    state = run.full_weights()
    if state is not None:
        return str(broadcast(run.place, weights_digest(state) if run.place.main else None))
    digests = all_gather(run.place, weights_digest(run.student.state_dict()))
    if len(set(digests)) != 1:
        raise FewstepError(f"the processes ended with different weights: {digests}")
    return digests[0]


def _finish(run: Distiller, out: Path, digest: str) -> Path:
    """Export the result: the snapshot of a run stopped by ``stop_at``, else ``last/`` and ``run.json``."""
    cfg, st, main = run.cfg, run.state, run.place.main
    if st.step < cfg.steps and not st.stopped_early:  # stopped by stop_at: the state of that step
        result = out / "snapshots" / f"step_{st.step}"
        run.export(result)
        return result
    result = out / ("best" if cfg.val_size and (out / "best").is_dir() else "last")
    run.export(out / "last")
    if main:
        plot_metrics(out / METRICS, out / "loss.png")
        summary = {"steps_done": st.step, "steps": cfg.steps, "stopped_early": st.stopped_early,
                   "best_val_loss": st.best_val if cfg.val_size else None, "skipped_steps": st.skipped,
                   "elapsed_s": st.elapsed_s, "world_size": run.place.world, "weights_sha256": digest,
                   "result": result.name}
        atomic_write_json(out / "run.json", summary, allow_nan=True)
    return result


def export(result: Path, dest: str | os.PathLike) -> None:
    """Copy a result directory (already in the teacher's layout, generation_config.json included) to ``dest``."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(result, dest)
