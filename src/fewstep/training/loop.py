"""``fewstep train``: seeded, resumable training of the lab models.

Everything a run needs is in its output directory: ``train_config.json`` (the frozen
configuration), ``checkpoint.pt`` (model, optimiser, step; rewritten atomically every
``save_every`` steps), ``train_log.jsonl`` (loss and learning rate per logged step),
``snapshots/step_N/`` (the model in Hugging Face layout, for learning curves) and ``final/``.
Running the same command again resumes from the checkpoint; the data of step s depends only on
(seed, s), so an interrupted and resumed run trains on exactly the same batches.

A run directory has one writer at a time (a lock on the directory). Every save (checkpoint,
snapshot, final model, export) is written completely beside its destination and renamed into place,
so a run killed while saving keeps the previous good state; on resume the log is cut back to the
checkpoint's step, so each step is logged once.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ConfigError, ResultsError
from fewstep.evaluation.store import HOLDER, lock_dir, read_json, read_samples
from fewstep.files import atomic_replace_dir, atomic_save, atomic_write_json, atomic_write_jsonl
from fewstep.models.loading import write_decode_defaults
from fewstep.training import data, lab, objectives
from fewstep.training.config import TrainConfig


def warmup_cosine(step: int, lr: float, warmup: int, steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``lr * min_lr_ratio`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def lr_at(cfg: TrainConfig, step: int) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)


def _new_model(cfg: TrainConfig):
    torch.manual_seed(cfg.seed)
    if cfg.kind == "dlm":
        return lab.new_dlm(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_hidden,
                           attention_block_length=cfg.attention_block_length)
    return lab.new_ar(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_hidden)


def _load_weights(cfg: TrainConfig, model) -> None:
    """Start from a trained model of the same architecture (e.g. to continue a bundled lab model)."""
    from fewstep.models.loading import load_model

    src = load_model(cfg.init_from)
    try:
        model.load_state_dict(src.module.state_dict())
    except RuntimeError as e:
        raise ConfigError(f"--init-from {cfg.init_from}: weights do not fit this architecture "
                          f"({str(e).splitlines()[0]})") from None


def _save_hf(cfg: TrainConfig, model, tok, out: Path) -> None:
    """Save the model in Hugging Face layout to ``out``, atomically (a complete directory renamed into place)."""
    save = lab.save_dlm if cfg.kind == "dlm" else lab.save_ar
    atomic_replace_dir(out, lambda tmp: save(model, tok, tmp))


def _check_config(cfg: TrainConfig, out: Path) -> None:
    """Record the configuration before the first step, or refuse a directory trained with another one."""
    cfg_path = out / "train_config.json"
    if cfg_path.exists():
        saved = read_json(cfg_path)
        # Fields added since the run started take their defaults.
        if {f.name: saved.get(f.name, f.default) for f in fields(TrainConfig)} != asdict(cfg):
            raise ConfigError(f"{out} holds a run with a different configuration; use another --out")
    elif any(p.name != HOLDER for p in out.iterdir()):
        raise ResultsError(f"{out} is not empty and holds no training run (no train_config.json); use another --out")
    else:
        if cfg.init_from:
            from fewstep.models.loading import resolve

            resolve(cfg.init_from)
        atomic_write_json(cfg_path, asdict(cfg))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise ResultsError(f"{path} is corrupt ({type(e).__name__}); remove it to restart the run") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "generator", "step"} <= set(state):
        raise ResultsError(f"{path} is not a fewstep checkpoint; remove it to restart the run")
    return state


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to the checkpoint's: the steps after it are trained (and logged) again."""
    if path.exists():
        atomic_write_jsonl(path, [r for r in read_samples(path, key="step") if r["step"] <= step])


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: bool = True, stop_at: int | None = None) -> Path:
    """Train (or resume) the run in ``out_dir``; returns the directory of the trained model.

    ``stop_at`` ends the run early at that step, keeping the learning-rate schedule of
    ``cfg.steps``: the model is then exactly the one an uninterrupted run has at that step
    (saved to ``snapshots/step_N``), and a later call without ``stop_at`` continues the run."""
    end = cfg.steps if stop_at is None else stop_at
    if not 0 < end <= cfg.steps:
        raise ConfigError(f"stop_at must be in [1, steps={cfg.steps}], got {stop_at}")

    out = Path(out_dir)
    with lock_dir(out):
        _check_config(cfg, out)
        return _train(cfg, out, end, progress)


def _train(cfg: TrainConfig, out: Path, end: int, progress: bool) -> Path:
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    model, tok = _new_model(cfg)
    if cfg.init_from:
        _load_weights(cfg, model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    start, elapsed_before = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = _load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = state["step"]
        elapsed_before = state.get("elapsed_s", 0.0)
    model.train()
    _trim_log(out / "train_log.jsonl", start)
    log = open(out / "train_log.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"train {cfg.kind}", unit="step")
    t0, running = time.time(), None
    for step in range(start, end):
        problems = data.problems_for_step(cfg.seed, step, cfg.batch_size)
        batch = data.encode(tok, problems, cfg.gen_length if cfg.kind == "dlm" else None)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            if cfg.kind == "dlm":
                loss = objectives.mdlm_loss(model, batch, tok.mask_token_id, gen)
            else:
                loss = objectives.causal_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if done % cfg.log_every == 0:
            log.write(json.dumps({"step": done, "loss": loss.item(), "smooth_loss": running,
                                  "lr": lr_at(cfg, step), "elapsed_s": elapsed_before + time.time() - t0}) + "\n")
            log.flush()
        if done % cfg.save_every == 0 or done == end:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                     "step": done, "elapsed_s": elapsed_before + time.time() - t0}
            atomic_save(ckpt, functools.partial(torch.save, state))
        if done % cfg.snapshot_every == 0 or done == end < cfg.steps:
            _save_hf(cfg, model, tok, out / "snapshots" / f"step_{done}")
    bar.close()
    log.close()
    if end < cfg.steps:
        if start >= end and not (out / "snapshots" / f"step_{end}").is_dir():
            raise ConfigError(f"{out} is already past step {end} and has no snapshot of it")
        return out / "snapshots" / f"step_{end}"
    if not (out / "final").is_dir() or start < end:
        _save_hf(cfg, model, tok, out / "final")
    return out / "final"


DECODE_DEFAULTS = {"dlm": {"gen_length": 24, "block_length": 24, "steps": 24}, "ar": {"gen_length": 80}}


def check_export(out: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Refuse an export destination that is, holds or lies inside the run directory, or is not a directory."""
    run, target = Path(out).resolve(), Path(dest).resolve()
    if target == run or run in target.parents or target in run.parents:
        raise ConfigError(f"--export {dest} would replace the run directory {out} or part of it; "
                          "export somewhere else")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--export {dest} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise ConfigError(f"--export {dest} is a directory that holds no model; refusing to replace it")


def export(cfg: TrainConfig, final: Path, dest: str | os.PathLike) -> None:
    """Copy a trained model to ``dest`` with its decode defaults (generation_config.json).

    The copy is made complete beside ``dest`` and then swapped in: until then ``dest`` keeps the
    previous model."""
    defaults = dict(DECODE_DEFAULTS[cfg.kind])
    if cfg.kind == "dlm" and cfg.attention_block_length:  # block diffusion: one attention block at a time
        defaults["block_length"] = cfg.attention_block_length

    def fill(tmp: Path) -> None:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        write_decode_defaults(tmp, defaults)

    atomic_replace_dir(Path(dest), fill)
