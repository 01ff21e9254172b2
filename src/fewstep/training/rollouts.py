"""The teacher's rollouts on disk (``fewstep rollouts``), for ``fewstep distill --objective trajectory
--rollouts DIR``.

The frozen teacher decodes the prompts of every training step a distill run will see (the batch of
step s is a pure function of seed and s: :class:`~fewstep.training.distill_data.Dataset`), and the
validation set, through the project's decode loop with any strategy. Per step one file holds, per
example, the final answer tokens, the step of the trajectory at which each position was committed and
whether the answer is right, with the step's cost (teacher forwards and seconds), which the distill
run logs as if it had rolled out itself (``rollout_nfe``, ``rollout_s``): it is part of the training
cost.

Layout of ``DIR``::

    rollouts.json             identity: teacher (path and checksum), data, seed, batch, steps, decode config
    shard-R-of-N/step-000123.pt   one step's rollouts, written atomically by process R of N
    shard-R-of-N/val.pt       the validation set's (process 0)

Resumable (finished steps are found in any shard directory and skipped, whatever the process count
then), sharded over the processes of a launcher (``torchrun --nproc-per-node N -m fewstep.cli
rollouts ...``: process R takes the steps s = R mod N), each shard directory locked by its writer.
A run with another identity in the same directory is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ConfigError
from fewstep.training.config import DistillConfig, option
from fewstep.training.trajectory import Rollouts

MANIFEST = "rollouts.json"
IDENTITY = ("teacher", "task", "data", "seed", "batch_size", "val_size", "gen_length")


@dataclass(frozen=True)
class RolloutConfig:
    """``fewstep rollouts``: which steps of which distill run, and how the teacher decodes them."""

    teacher: str = option("tiny-dlm", "the teacher: a bundled name or a masked diffusion model directory")
    strategy: str = option("llada", "the teacher's decoding, a bench spec (e.g. llada:steps=8 or "
                                    "threshold:threshold=0.9); llada's steps default to one token per step")
    task: str = option("arith", "training data: this task's training split, unless --data names a JSONL file")
    data: str = option("", "JSONL training data with question and answer (or solution) fields")
    gen_length: int = option(0, "answer region; 0: the teacher's decode default")
    steps: int = option(1000, "the distill run's optimiser steps (steps 0 .. steps - 1 are rolled out)")
    batch_size: int = option(64, "the distill run's examples per optimiser step")
    val_size: int = option(256, "the distill run's held-out examples (rolled out too)")
    seed: int = option(0, "the distill run's seed")
    device: str = option("cpu", "cpu or cuda (cuda:LOCAL_RANK under a launcher)")
    threads: int = option(0, "CPU threads (0: torch's default)")

    def distill_config(self) -> DistillConfig:
        """The distill configuration whose data these rollouts cover."""
        return DistillConfig(teacher=self.teacher, objective="trajectory", task=self.task, data=self.data,
                             gen_length=self.gen_length, steps=self.steps, batch_size=self.batch_size,
                             val_size=self.val_size, seed=self.seed, device=self.device)


def llada_config(gen_length: int, steps: int) -> Any:
    """The trajectory objective's own rollout decode: llada, one block, ``steps`` steps."""
    from fewstep.config import DecodeConfig

    return DecodeConfig(strategy="llada", gen_length=gen_length, block_length=gen_length, steps=steps)


def decode_config(spec: str, gen_length: int) -> Any:
    """The rollout decode of a bench-style spec over ``gen_length`` positions (llada: one token per
    step unless the spec gives its steps)."""
    from fewstep.config import parse_strategy_spec, split_assignment, with_gen_length

    given = {split_assignment(a)[0] for a in spec.partition(":")[2].split(",") if a.strip()}
    cfg = with_gen_length(parse_strategy_spec(spec.partition(":")[0]), gen_length)
    cfg = parse_strategy_spec(spec, cfg)
    if cfg.strategy == "llada" and "steps" not in given:
        cfg = parse_strategy_spec(f"llada:steps={gen_length}", cfg)
    return cfg


def identity(cfg: DistillConfig, gen_length: int) -> dict[str, Any]:
    """What a rollout directory must match to serve a distill run: its teacher and its data."""
    from fewstep.models.checksum import model_checksum

    out = {k: getattr(cfg, k) for k in IDENTITY}
    out.update(gen_length=gen_length, teacher_sha256=model_checksum(cfg.teacher))
    return out


class OnTheFly:
    """Rollouts made when asked (the trajectory objective without ``rollouts``)."""

    def __init__(self, teacher: Any, decode: Any):
        self.teacher, self.decode = teacher, decode

    def step(self, s: int, problems: list[Any]) -> Rollouts:
        from fewstep.training.trajectory import rollouts

        return rollouts(self.teacher, problems, self.decode)

    def val(self, problems: list[Any]) -> Rollouts:
        return self.step(-1, problems)


def source(cfg: DistillConfig, teacher: Any, gen_length: int) -> OnTheFly | RolloutStore:
    """Where a trajectory run's rollouts come from: the directory ``cfg.rollouts`` (checked against
    the run), else the teacher at every step (llada, ``traj_steps`` steps)."""
    own = llada_config(gen_length, cfg.traj_steps or gen_length)
    if not cfg.rollouts:
        return OnTheFly(teacher, own)
    store = RolloutStore(cfg.rollouts, identity(cfg, gen_length))
    if store.steps < cfg.steps:
        raise ConfigError(f"{cfg.rollouts} holds rollouts for {store.steps} steps, the run has {cfg.steps}")
    if cfg.traj_steps and store.decode != asdict(own):
        raise ConfigError(f"--traj-steps {cfg.traj_steps} asks for llada rollouts the ones in {cfg.rollouts} are "
                          f"not ({store.decode['strategy']}): drop --traj-steps or write the rollouts again")
    return store


def _save(path: Path, r: Rollouts) -> None:
    from fewstep.files import atomic_save

    payload = {"tokens": r.tokens.to(torch.int32), "committed_at": r.committed_at.to(torch.int16),
               "steps": r.steps, "right": r.right, "nfe": r.nfe, "seconds": r.seconds}
    atomic_save(path, lambda tmp: torch.save(payload, tmp))


def _load(path: Path) -> Rollouts:
    p = torch.load(path, weights_only=True)
    return Rollouts(p["tokens"].long(), p["committed_at"].long(), int(p["steps"]), p["right"], int(p["nfe"]),
                    float(p["seconds"]))


class RolloutStore:
    """A rollout directory opened for a distill run: checked against its identity, read by step."""

    def __init__(self, path: str, expected: dict[str, Any]):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ConfigError(f"{path} holds no rollouts ({MANIFEST} missing): write them with fewstep rollouts")
        saved = json.loads(manifest.read_text())
        self.steps, self.decode = int(saved.get("steps", 0)), saved.get("decode", {})
        diff = [k for k in expected if saved.get(k) != expected[k]]
        if diff:
            raise ConfigError(f"the rollouts in {path} were made for another run ({', '.join(diff)} differ): "
                              f"write them with the run's teacher, data, seed, batch size and gen length")
        self.files = {p.stem: p for p in sorted(self.path.glob("shard-*/*.pt"))}

    def _get(self, name: str) -> Rollouts:
        if name not in self.files:
            self.files = {p.stem: p for p in sorted(self.path.glob("shard-*/*.pt"))}
        if name not in self.files:
            raise ConfigError(f"{self.path} has no rollouts for {name.replace('-', ' ')}: finish fewstep rollouts "
                              f"(it resumes) for at least the run's --steps")
        return _load(self.files[name])

    def step(self, s: int, problems: list[Any] | None = None) -> Rollouts:
        r = self._get(f"step-{s:06d}")
        if problems is not None and len(problems) != len(r.right):
            raise ConfigError(f"{self.path}: step {s} holds {len(r.right)} rollouts, the batch has {len(problems)}")
        return r

    def val(self, problems: list[Any] | None = None) -> Rollouts:
        return self._get("val")


def write_rollouts(rc: RolloutConfig, out: str, progress: bool = True) -> dict[str, Any]:
    """Roll the teacher out on this process's share of the run's steps (and, on process 0, the
    validation set) into ``out``; finished steps are skipped. Returns the shard's totals."""
    from fewstep.evaluation.store import lock_dir
    from fewstep.files import atomic_write_json
    from fewstep.parallel import ALONE, launched, rank_device
    from fewstep.training import trajectory
    from fewstep.training.distill_data import Dataset
    from fewstep.training.student import load_teacher

    place = launched() or ALONE
    if rc.threads:
        torch.set_num_threads(rc.threads)
    cfg = rc.distill_config()
    dataset = Dataset(cfg)
    teacher = load_teacher(cfg, rank_device(rc.device, place.local_rank))
    g = rc.gen_length or int(teacher.decode_defaults.get("gen_length", 0))
    if not g:
        raise ConfigError(f"teacher {rc.teacher!r} has no default gen_length (max_new_tokens): give --gen-length")
    decode = decode_config(rc.strategy, g)
    root = Path(out)
    mine = {**identity(cfg, g), "decode": asdict(decode)}
    manifest = root / MANIFEST
    steps = RolloutStore(out, mine).steps if manifest.is_file() else 0
    root.mkdir(parents=True, exist_ok=True)
    if place.main and rc.steps > steps:  # the steps it will hold (a longer run extends it)
        atomic_write_json(manifest, {**mine, "steps": rc.steps})
    shard = root / f"shard-{place.rank}-of-{place.world}"
    done = {p.stem for p in root.glob("shard-*/*.pt")}
    todo = [s for s in range(place.rank, rc.steps, place.world) if f"step-{s:06d}" not in done]
    totals = {"steps": 0, "nfe": 0, "seconds": 0.0}
    with lock_dir(shard):
        if place.main and "val" not in done:
            _save(shard / "val.pt", trajectory.rollouts(teacher, dataset.val, decode))
        bar = _progress(todo, progress and place.main)
        for s in bar:
            t0 = time.perf_counter()
            r = trajectory.rollouts(teacher, dataset.batch(s), decode)
            _save(shard / f"step-{s:06d}.pt", r)
            totals["steps"] += 1
            totals["nfe"] += r.nfe
            totals["seconds"] += time.perf_counter() - t0
    return totals


def _progress(items: list[int], show: bool) -> Any:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="rollouts", unit="step")

