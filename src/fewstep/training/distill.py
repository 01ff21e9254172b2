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
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fewstep.errors import ConfigError, FewstepError, ResultsError, TaskError
from fewstep.files import atomic_replace_dir, atomic_save, atomic_write_json, atomic_write_jsonl, read_jsonl
from fewstep.training import data, dscd, objectives
from fewstep.training.config import DistillConfig
from fewstep.training.loop import warmup_cosine

CONFIG_FILE = "distill_config.json"
# Fields that may change between a run and its resumption (where it runs and how it exports, not what it computes).
RESUMABLE_CHANGES = ("device", "threads", "log_every", "save_dtype")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


@dataclass(frozen=True)
class Example:
    question: str
    solution: str


# ---------------------------------------------------------------- data


def load_jsonl(path: str) -> list[Example]:
    """Examples of a JSONL file with "question" and "answer" (or "solution") on every line."""
    from fewstep.tasks.jsonl import read_jsonl

    out = []
    for i, row in enumerate(read_jsonl(path, required=("question",)), 1):
        question, answer = row["question"], row.get("answer") or row.get("solution")
        if not isinstance(answer, str) or not answer.strip():
            raise TaskError(f"{path} row {i} has no answer: distillation needs a reference answer "
                            f"(an \"answer\" or \"solution\" field) on every row")
        out.append(Example(str(question), answer))
    if not out:
        raise TaskError(f"{path} holds no examples")
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


class Dataset:
    """Training batches by step (a pure function of seed and step) and a fixed validation set."""

    def __init__(self, cfg: DistillConfig):
        self.seed, self.batch_size = cfg.seed, cfg.batch_size
        self.rows: list[Example] | None = None
        if cfg.data:
            rows = load_jsonl(cfg.data)
            order = _epoch_order(len(rows), cfg.seed, -1)
            if len(rows) <= cfg.val_size:
                raise ConfigError(f"{cfg.data} has {len(rows)} examples, not more than val_size={cfg.val_size}")
            self.val: list[Any] = [rows[i] for i in order[: cfg.val_size]]
            self.rows = [rows[i] for i in order[cfg.val_size:]]
        elif cfg.task == "arith":
            from fewstep.tasks import arith

            # Negative seeds: never one of the training streams (seed * 1_000_003 + step >= 0).
            self.val = list(itertools.islice(arith.train_problems(-(cfg.seed + 1)), cfg.val_size))
        else:
            raise ConfigError(f"task {cfg.task!r} has no built-in training split: give --data FILE.jsonl "
                              f"(\"question\" and \"answer\" per line)")

    def batch(self, step: int) -> list[Any]:
        if self.rows is None:
            return list(data.problems_for_step(self.seed, step, self.batch_size))
        n = len(self.rows)
        start = step * self.batch_size
        return [self.rows[_epoch_order(n, self.seed, g // n)[g % n]] for g in range(start, start + self.batch_size)]


def encode(tok, examples: list[Any], gen_length: int) -> data.Batch:
    try:
        return data.encode(tok, examples, gen_length)
    except ValueError as e:
        raise ConfigError(f"{e}: raise --gen-length") from None


# ---------------------------------------------------------------- models


def load_teacher(cfg: DistillConfig, device: str):
    """The teacher (a :class:`~fewstep.models.adapter.DiffusionModel`), frozen, in eval mode."""
    from fewstep.models.loading import load_model

    teacher = load_model(cfg.teacher, device=device)
    if teacher.kind != "diffusion":
        raise ConfigError(f"teacher {cfg.teacher!r} is a {teacher.kind} model, not a masked diffusion model")
    teacher.module.eval().requires_grad_(False)
    return teacher


def make_student(teacher_module: torch.nn.Module, cfg: DistillConfig) -> torch.nn.Module:
    """A trainable copy of the teacher: every weight, or LoRA adapters (``lora_r`` > 0) through peft."""
    student = copy.deepcopy(teacher_module).train().requires_grad_(True)
    if not cfg.lora_r:
        return student
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    names = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(f"LoRA target(s) {missing or targets} match no linear layer of the teacher "
                          f"(its linear layers: {', '.join(leaves)})")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(student, lora)


def plain_module(student: torch.nn.Module) -> torch.nn.Module:
    """The student as a teacher-shaped module: LoRA merged into a copy, else the student itself."""
    merge = getattr(copy.deepcopy(student), "merge_and_unload", None) if hasattr(student, "peft_config") else None
    return merge() if merge is not None else student


def save_model(module: torch.nn.Module, teacher_dir: Path, out: Path, dtype: torch.dtype) -> None:
    """The student in the teacher's layout: the teacher's files (config, tokenizer, generation_config.json,
    modelling code) with the student's weights; written beside ``out`` and renamed into place."""
    def fill(tmp: Path) -> None:
        for f in teacher_dir.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(f, tmp / f.name)
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        save_pretrained = getattr(module, "save_pretrained", None)
        if save_pretrained is not None:
            save_pretrained(tmp, state_dict=state, safe_serialization=True)
        else:
            from safetensors.torch import save_file

            save_file(state, tmp / "model.safetensors")
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable like the teacher's files, whatever mode the writer chose

    atomic_replace_dir(out, fill)


def logits_of(module, ids: torch.Tensor, att: torch.Tensor, shifted: bool) -> torch.Tensor:
    """[B, T, V] logits with ``logits[:, i]`` predicting position i (Dream-style models realigned)."""
    out = module(input_ids=ids, attention_mask=att).logits
    return torch.cat([out[:, :1], out[:, :-1]], dim=1) if shifted else out


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def seed_of(*key: int) -> int:
    """A generator seed from integers, the same on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_world(device: str) -> tuple[World, bool]:
    """This process's place (from torchrun / accelerate launch), the process group started if needed."""
    import torch.distributed as dist

    from fewstep.evaluation.distributed import launched

    launch = launched()
    if launch is None or launch.world == 1:
        return World(), False
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(launch.rank, launch.world, launch.local_rank), owner


def _all_sum(world: World, values: list[float], device: torch.device) -> list[float]:
    if world.size == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- the run


def check_config(cfg: DistillConfig, out: Path, world: World) -> None:
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
    elif world.main:
        atomic_write_json(path, asdict(cfg), allow_nan=True)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type in ("cpu", "cuda"))


@dataclass
class State:
    step: int = 0
    best_val: float = float("inf")
    bad_vals: int = 0
    stopped_early: bool = False
    skipped: int = 0
    elapsed_s: float = 0.0


class Distiller:
    """One process's share of a run: teacher, student, optimiser and the step function."""

    def __init__(self, cfg: DistillConfig, world: World, dataset: Dataset):
        from fewstep.evaluation.distributed import rank_device
        from fewstep.models.loading import resolve

        self.cfg, self.world, self.dataset = cfg, world, dataset
        self.device = torch.device(rank_device(cfg.device, world.local_rank))
        self.teacher_dir = resolve(cfg.teacher)
        self.teacher = load_teacher(cfg, str(self.device))
        self.tok = self.teacher.tokenizer
        self.gen_length = cfg.gen_length or int(self.teacher.decode_defaults.get("gen_length", 0))
        if not self.gen_length:
            raise ConfigError(f"teacher {cfg.teacher!r} has no default gen_length (max_new_tokens): give --gen-length")
        self.ratios = dscd.MaskRatios(cfg.rs_min, cfg.rs_max, cfg.rt_scale_min, cfg.rt_scale_max,
                                      cfg.rt_min, cfg.rt_max)
        self.student = make_student(self.teacher.module, cfg)
        # The ablation (mdlm) never asks the teacher.
        self.teacher_module: torch.nn.Module | None = self.teacher.module if cfg.objective == "dscd" else None
        self.model: Any = self.student
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=ids)
        params = [p for p in self.student.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.state = State()

    # -- one step

    def _generator(self, *key: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_of(self.cfg.seed, *key))

    def _slices(self, n: int) -> list[torch.Tensor]:
        """This process's rows of an n-row batch, in ``grad_accum`` micro-batches."""
        mine = torch.arange(self.world.rank, n, self.world.size)
        return [c for c in torch.tensor_split(mine, self.cfg.grad_accum) if len(c)]

    def _terms(self, batch: data.Batch, rows: torch.Tensor, s_mask: torch.Tensor, t_mask: torch.Tensor,
               model: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (kl, ce) of one micro-batch (rows of the step's batch) with grad through ``model``."""
        ids = batch.input_ids[rows].to(self.device)
        att = batch.attention_mask[rows].to(self.device)
        sm, tm = s_mask[rows].to(self.device), t_mask[rows].to(self.device)
        mask_id, shifted = self.teacher.mask_id, self.teacher.shifted_logits
        with _autocast(self.device, self.cfg.autocast_bf16):
            t_logits = None
            if self.teacher_module is not None:
                with torch.no_grad():
                    t_logits = logits_of(self.teacher_module, ids.masked_fill(tm, mask_id), att, shifted)
            s_logits = logits_of(model, ids.masked_fill(sm, mask_id), att, shifted)
        return dscd.token_terms(s_logits, t_logits, ids, sm, tm, self.cfg.temperature, self.cfg.kl_clip,
                                self.cfg.ce_clip, self.cfg.visible_target)

    def _mdlm_micro(self, batch: data.Batch, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The plain masked-diffusion loss of one micro-batch (mean over its rows)."""
        sub = data.Batch(batch.input_ids[rows].to(self.device), batch.attention_mask[rows].to(self.device),
                         batch.answer_mask[rows].to(self.device))
        shifted = self.teacher.shifted_logits

        def call(input_ids, attention_mask):
            return SimpleNamespace(logits=logits_of(self.model, input_ids, attention_mask, shifted))

        with _autocast(self.device, self.cfg.autocast_bf16):
            return objectives.mdlm_loss(call, sub, self.teacher.mask_id, gen)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step; returns the logged values (identical on every process)."""
        cfg = self.cfg
        torch.manual_seed(seed_of(cfg.seed, step, self.world.rank, 1))  # LoRA dropout
        lam = dscd.lambda_at(step, cfg.steps, cfg.lambda_start, cfg.lambda_end, cfg.lambda_hold)
        lr = warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = encode(self.tok, self.dataset.batch(step), self.gen_length)
        gen = self._generator(step)
        s_mask, t_mask = dscd.nested_masks(batch.answer_mask, gen, self.ratios)
        total = int(s_mask.sum())  # masked tokens of the whole step, over every process
        micro = self._slices(len(batch.input_ids))
        sums = torch.zeros(3, dtype=torch.float64)  # loss, kl, ce (token sums; mdlm: row-weighted loss)
        self.opt.zero_grad(set_to_none=True)
        for i, rows in enumerate(micro):
            sync = i == len(micro) - 1 or self.world.size == 1
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                if cfg.objective == "mdlm":
                    loss = self._mdlm_micro(batch, rows, self._generator(step, self.world.rank, i))
                    share = len(rows) / len(batch.input_ids)
                    (loss * share * self.world.size).backward()
                    sums += torch.tensor([loss.item() * share, 0.0, 0.0], dtype=torch.float64)
                else:
                    kl, ce = self._terms(batch, rows, s_mask, t_mask, self.model)
                    per_token = dscd.combine(kl, ce, lam)
                    (per_token.sum() * (self.world.size / total)).backward()
                    sums += torch.tensor([per_token.sum().item(), kl.sum().item(), ce.sum().item()],
                                         dtype=torch.float64) / total
        loss_v, kl_v, ce_v = _all_sum(self.world, sums.tolist(), self.device if self.device.type == "cuda"
                                      else torch.device("cpu"))
        params = [p for p in self.student.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        if math.isfinite(loss_v) and math.isfinite(grad_norm):
            self.opt.step()
        else:  # NaN / Inf guard: the same decision on every process (the values are all-reduced)
            self.opt.zero_grad(set_to_none=True)
            self.state.skipped += 1
        return {"loss": loss_v, "kl": kl_v, "ce": ce_v, "lambda": lam, "lr": lr, "grad_norm": grad_norm,
                "skipped": self.state.skipped}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on the fixed validation set with fixed masks: the DSCD loss at ``lambda_end`` (the
        schedule moves; the monitored quantity must not), or the masked-token CE for ``mdlm``."""
        cfg, val = self.cfg, self.dataset.val
        self.student.eval()
        sums = [0.0, 0.0, 0.0]
        batch = encode(self.tok, val, self.gen_length)
        s_mask, t_mask = dscd.nested_masks(batch.answer_mask, self._generator(-1), self.ratios)
        mine = torch.arange(self.world.rank, len(val), self.world.size)
        for rows in torch.split(mine, max(1, cfg.batch_size // cfg.grad_accum)):
            kl, ce = self._terms(batch, rows, s_mask, t_mask, self.student)
            sums[0] += kl.sum().item()
            sums[1] += ce.sum().item()
            sums[2] += len(kl)
        kl_s, ce_s, n = _all_sum(self.world, sums, self.device if self.device.type == "cuda" else torch.device("cpu"))
        self.student.train()
        kl_m, ce_m = kl_s / n, ce_s / n
        loss = ce_m if cfg.objective == "mdlm" else float(dscd.combine(torch.tensor(kl_m), torch.tensor(ce_m),
                                                                       cfg.lambda_end))
        return {"val_loss": loss, "val_kl": kl_m, "val_ce": ce_m}

    # -- checkpoints

    def save_checkpoint(self, path: Path) -> None:
        ckpt = {"student": self.student.state_dict(), "optimizer": self.opt.state_dict(),
                "state": asdict(self.state)}
        atomic_save(path, functools.partial(torch.save, ckpt))

    def load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.student.load_state_dict(ckpt["student"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.state = State(**ckpt["state"])

    def export(self, out: Path) -> None:
        save_model(plain_module(self.student), self.teacher_dir, out, getattr(torch, self.cfg.save_dtype))


def _trim_log(path: Path, step: int) -> None:
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
    """loss.png: training loss (and its KL / CE parts) and validation loss against the step."""
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
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def distill(cfg: DistillConfig, out_dir: str | os.PathLike, progress: bool = True, stop_at: int | None = None) -> Path:
    """Run (or resume) the distillation in ``out_dir``; returns the directory of the result
    (``best/`` when there is a validation set, else ``last/``).

    ``stop_at`` ends the run at that step keeping the schedules of ``cfg.steps`` (a later call
    without it continues the same run)."""
    from tqdm import tqdm

    end = cfg.steps if stop_at is None else stop_at
    if not 0 < end <= cfg.steps:
        raise ConfigError(f"stop_at must be in [1, steps={cfg.steps}], got {stop_at}")
    out = Path(out_dir)
    world, owner = _start_world(cfg.device)
    try:
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
        _barrier(world)
        check_config(cfg, out, world)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif world.size > 1 and not cfg.device.startswith("cuda"):
            torch.set_num_threads(1)
        run = Distiller(cfg, world, Dataset(cfg))
        ckpt, log_path = out / "checkpoint.pt", out / "metrics.jsonl"
        if ckpt.exists():
            run.load_checkpoint(ckpt)
        st = run.state
        if world.main:
            _trim_log(log_path, st.step)
        log = open(log_path, "a") if world.main else None
        bar = tqdm(total=cfg.steps, initial=st.step, disable=not (progress and world.main),
                   desc=f"distill {cfg.objective}", unit="step")
        t0, elapsed0 = time.time(), st.elapsed_s

        def write(record: dict[str, Any]) -> None:
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()

        def checkpoint() -> None:
            st.elapsed_s = elapsed0 + time.time() - t0
            if world.main:
                run.save_checkpoint(ckpt)
            _barrier(world)

        while st.step < end and not st.stopped_early:
            values = run.train_step(st.step)
            st.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lam=f"{values['lambda']:.2f}")
            if st.step % cfg.log_every == 0:
                write({"step": st.step, **values, "elapsed_s": elapsed0 + time.time() - t0})
            if cfg.val_size and (st.step % cfg.val_every == 0 or st.step == cfg.steps):
                v = run.validate()
                better = v["val_loss"] < st.best_val
                st.best_val, st.bad_vals = (v["val_loss"], 0) if better else (st.best_val, st.bad_vals + 1)
                st.stopped_early = bool(cfg.patience) and st.bad_vals >= cfg.patience
                write({"step": st.step, **v, "best": better, "stopped_early": st.stopped_early})
                if better and world.main:
                    run.export(out / "best")
                if world.main:
                    plot_metrics(log_path, out / "loss.png")
                checkpoint()
            elif st.step % cfg.save_every == 0 or st.step == end:
                checkpoint()
        bar.close()
        if log is not None:
            log.close()
        digest = weights_digest(run.student)
        if world.size > 1:
            import torch.distributed as dist

            digests: list[Any] = [None] * world.size
            dist.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                raise FewstepError(f"the processes ended with different weights: {digests}")
        if st.step < cfg.steps and not st.stopped_early:  # stopped by stop_at: the state of that step
            result = out / "snapshots" / f"step_{st.step}"
            if world.main:
                run.export(result)
        else:
            result = out / ("best" if cfg.val_size and (out / "best").is_dir() else "last")
            if world.main:
                run.export(out / "last")
                plot_metrics(log_path, out / "loss.png")
                summary = {"steps_done": st.step, "steps": cfg.steps, "stopped_early": st.stopped_early,
                           "best_val_loss": st.best_val if cfg.val_size else None, "skipped_steps": st.skipped,
                           "elapsed_s": st.elapsed_s, "world_size": world.size, "weights_sha256": digest,
                           "result": result.name}
                atomic_write_json(out / "run.json", summary, allow_nan=True)
        _barrier(world)
        return result
    finally:
        if owner:
            import torch.distributed as dist

            dist.destroy_process_group()


def export(result: Path, dest: str | os.PathLike) -> None:
    """Copy a result directory (already in the teacher's layout, generation_config.json included) to ``dest``."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(result, dest)
