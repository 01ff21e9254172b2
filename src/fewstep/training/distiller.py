"""One process's share of a ``fewstep distill`` run: teacher, student, optimiser, the training step,
validation and checkpoints.

Every process draws the step's whole batch and masks and computes its rows ``rank::world``; the loss
is normalised by the step's total masked-token count over all processes, so the gradient is the
one-process gradient whatever the process count and ``grad_accum``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fewstep.errors import ConfigError
from fewstep.evaluation.calibration import auroc
from fewstep.files import atomic_save
from fewstep.parallel import Place, all_gather, all_sum, rank_device
from fewstep.training import data, dscd, edit, objectives, sharding, trajectory
from fewstep.training.config import DistillConfig
from fewstep.training.distill_data import Dataset, encode
from fewstep.training.loop import warmup_cosine
from fewstep.training.rollouts import source
from fewstep.training.student import load_teacher, logits_of, make_student, plain_module, save_model, teacher_view


def seed_of(*key: int) -> int:
    """A generator seed from integers, the same on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") >> 1


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

    def __init__(self, cfg: DistillConfig, place: Place, dataset: Dataset):
        from fewstep.models.loading import resolve

        self.cfg, self.place, self.dataset = cfg, place, dataset
        self.device = torch.device(rank_device(cfg.device, place.local_rank))
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
        self.sharded = sharding.sharded(cfg, place)
        self.model: Any = sharding.wrap(self.student, cfg, place, self.device)
        params = [p for p in self.student.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.state = State()
        special = {self.teacher.mask_id, self.teacher.pad_id, *self.tok.all_special_ids} - {self.teacher.eos_id}
        self.vocab = edit.replaceable_ids(self.teacher.embedding_table().shape[0], special)
        self._val_drafts: torch.Tensor | None = None
        self._val_rollouts: trajectory.Rollouts | None = None
        self.rollouts = source(cfg, self.teacher, self.gen_length)  # the trajectory objective's

    # -- one step

    def _generator(self, *key: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_of(self.cfg.seed, *key))

    def _slices(self, n: int) -> list[torch.Tensor]:
        """This process's rows of an n-row batch, in ``grad_accum`` micro-batches."""
        mine = torch.arange(self.place.rank, n, self.place.world)
        # under FSDP every process runs grad_accum micro-batches (empty ones idle)
        return [c for c in torch.tensor_split(mine, self.cfg.grad_accum) if len(c) or self.sharded]

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
                with torch.no_grad(), teacher_view(self.student):
                    t_logits = logits_of(self.teacher_module, ids.masked_fill(tm, mask_id), att, shifted)
            s_logits = logits_of(model, ids.masked_fill(sm, mask_id), att, shifted)
        return dscd.token_terms(s_logits, t_logits, ids, sm, tm, self.cfg.temperature, self.cfg.kl_clip,
                                self.cfg.ce_clip, self.cfg.visible_target)

    def _mdlm_micro(self, batch: data.Batch, rows: torch.Tensor, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The plain masked-diffusion loss of one micro-batch (rows of the step's batch, with the
        step's masks): the sum of its rows' losses."""
        sub = data.Batch(batch.input_ids[rows].to(self.device), batch.attention_mask[rows].to(self.device),
                         batch.answer_mask[rows].to(self.device))
        shifted = self.teacher.shifted_logits

        def call(input_ids, attention_mask):
            return SimpleNamespace(logits=logits_of(self.model, input_ids, attention_mask, shifted))

        with _autocast(self.device, self.cfg.autocast_bf16):
            return objectives.mdlm_row_losses(call, sub, t[rows], masked[rows], self.teacher.mask_id).sum()

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step; returns the logged values (identical on every process)."""
        cfg = self.cfg
        torch.manual_seed(seed_of(cfg.seed, step, self.place.rank, 1))  # LoRA dropout
        lam = dscd.lambda_at(step, cfg.steps, cfg.lambda_start, cfg.lambda_end, cfg.lambda_hold)
        lr = warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        problems = self.dataset.batch(step)
        batch = encode(self.tok, problems, self.gen_length)
        gen = self._generator(step)
        if cfg.objective == "edit":
            return self._edit_step(batch, problems, gen, lam, lr)
        if cfg.objective == "trajectory":
            with teacher_view(self.student):  # LoRA: the base weights, adapters off
                r = self.rollouts.step(step, problems)
            return self._trajectory_step(batch, r, gen, lam, lr)
        s_mask, t_mask = dscd.nested_masks(batch.answer_mask, gen, self.ratios)
        total = int(s_mask.sum())  # masked tokens of the whole step, over every process
        # the ablation's masks: the whole step's, from its own seed (never the rank or micro-batch)
        mdlm = objectives.mdlm_masks(batch.answer_mask, self._generator(step, 2)) if cfg.objective == "mdlm" else ()
        micro = self._slices(len(batch.input_ids))
        # loss, kl, ce, kl_clipped, ce_clipped (token means over the step; mdlm: row-weighted loss)
        sums = torch.zeros(5, dtype=torch.float64)
        self.opt.zero_grad(set_to_none=True)
        for i, rows in enumerate(micro):
            sync = i == len(micro) - 1 or self.place.world == 1
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                if not len(rows):  # FSDP: join the step's collectives with a zero-weight stand-in row
                    kl, ce = self._terms(batch, sharding.idle_rows(), s_mask, t_mask, self.model)
                    (0.0 * (kl.sum() + ce.sum())).backward()
                elif cfg.objective == "mdlm":
                    loss = self._mdlm_micro(batch, rows, *mdlm)
                    (loss * (self.place.world / len(batch.input_ids))).backward()
                    sums[0] += loss.item() / len(batch.input_ids)
                else:
                    kl, ce = self._terms(batch, rows, s_mask, t_mask, self.model)
                    per_token = dscd.combine(kl, ce, lam)
                    (per_token.sum() * (self.place.world / total)).backward()
                    clipped = [(kl >= cfg.kl_clip).sum().item(), (ce >= cfg.ce_clip).sum().item()]
                    sums += torch.tensor([per_token.sum().item(), kl.sum().item(), ce.sum().item(), *clipped],
                                         dtype=torch.float64) / total
        return self._apply(sums, lam, lr)

    def _apply(self, sums: torch.Tensor, lam: float, lr: float) -> dict[str, float]:
        """All-reduce the step's logged sums (loss, kl, ce and, for DSCD, the fractions of its
        student-masked tokens whose KL and CE terms hit their clips and so pass no gradient), clip
        the gradient and take the optimiser step (unless not finite)."""
        cfg = self.cfg
        loss_v, kl_v, ce_v, *clipped = all_sum(self.place, sums.tolist(), self.device if self.device.type == "cuda"
                                                else torch.device("cpu"))
        params = [p for p in self.student.parameters() if p.requires_grad]
        grad_norm = sharding.grad_norm(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        if math.isfinite(loss_v) and math.isfinite(grad_norm):
            self.opt.step()
        else:  # NaN / Inf guard: the same decision on every process (the values are all-reduced)
            self.opt.zero_grad(set_to_none=True)
            self.state.skipped += 1
        out = {"loss": loss_v, "kl": kl_v, "ce": ce_v, "lambda": lam, "lr": lr, "grad_norm": grad_norm,
               "skipped": self.state.skipped}
        if cfg.objective == "dscd":
            out.update(kl_clipped=clipped[0], ce_clipped=clipped[1])
        return out

    # -- the edit objective (fewstep.training.edit)

    def _adapter(self):
        """The student behind the teacher's model interface (for its own answers)."""
        return dataclasses.replace(self.teacher, module=plain_module(self.student))

    def _proposals(self, problems: list[Any], rows: torch.Tensor, c: edit.Corruption, drafts: torch.Tensor | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """[b, G] the self and drafter proposals of ``rows`` (-1 where a row has another source), or None."""
        g, src = self.gen_length, c.source[rows]
        out: list[torch.Tensor | None] = []
        for kind in (edit.SELF, edit.DRAFTER):
            pick = (src == kind).nonzero().squeeze(1)  # [k] positions in rows
            if not len(pick):
                out.append(None)
                continue
            ids = torch.full((len(rows), g), -1, dtype=torch.long)
            chosen = [problems[int(rows[i])] for i in pick]
            if kind == edit.SELF:
                prompts = [self.teacher.encode_prompt(p.question) for p in chosen]
                ids[pick] = edit.self_proposals(self._adapter(), prompts, g, self.cfg.edit_self_steps).cpu()
            elif drafts is not None:
                ids[pick] = drafts[rows[pick]]
            else:
                ids[pick] = edit.draft_proposals(self._adapter(), self.cfg.edit_drafter_name,
                                                 [p.question for p in chosen], g)
            out.append(ids)
        return out[0], out[1]

    def _edit_terms(self, batch: data.Batch, problems: list[Any], rows: torch.Tensor, c: edit.Corruption,
                    model: Any, drafts: torch.Tensor | None = None) -> tuple[torch.Tensor, edit.Judged]:
        """The weighted cross-entropy sum of one micro-batch, and its drafter rows' visible-token judgements."""
        g = self.gen_length
        self_ids, draft_ids = self._proposals(problems, rows, c, drafts)
        ids, att = batch.input_ids[rows], batch.attention_mask[rows]
        clean = ids[:, -g:]
        shown = edit.proposal(clean, c, rows, self_ids, draft_ids)
        masked = c.masked[rows] | edit.unproposed(c, rows, draft_ids)
        x = edit.inputs(ids, g, shown, masked, self.teacher.mask_id).to(self.device)
        att = att.to(self.device)
        with _autocast(self.device, self.cfg.autocast_bf16):
            embeds = None
            if draft_ids is not None and self.cfg.edit_interpolate > 0:
                table = self._adapter().embedding_table()
                embeds = edit.interpolated_embeds(lambda t: torch.nn.functional.embedding(t, table), x, g,
                                                  draft_ids.to(self.device), masked.to(self.device), c, rows)
            logits = logits_of(model, x, att, self.teacher.shifted_logits, embeds)[:, -g:]  # [b, G, V]
        assert c.t is not None
        judged_rows = edit.judging(c, rows)
        w = edit.weights(masked, c.masked[rows], c.t[rows], judged_rows, self.cfg.edit_visible_weight,
                         self.cfg.edit_inverse_t).to(self.device)
        visible = ~masked & (judged_rows & (c.source[rows] == edit.DRAFTER))[:, None]
        judged = edit.visible_probs(logits.detach().cpu(), shown, clean, visible)
        return edit.token_loss(logits, clean.to(self.device), w), judged

    def _edit_step(self, batch: data.Batch, problems: list[Any], gen: torch.Generator, lam: float,
                   lr: float) -> dict[str, float]:
        """One optimiser step of the edit objective, normalised by the step's answer positions (B x G)."""
        b = len(batch.input_ids)
        c = edit.draw(self.cfg, b, self.gen_length, self.vocab, gen)
        total = b * self.gen_length
        micro = self._slices(b)
        sums = torch.zeros(5, dtype=torch.float64)
        self.opt.zero_grad(set_to_none=True)
        for i, rows in enumerate(micro):
            sync = i == len(micro) - 1 or self.place.world == 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss, _ = self._edit_terms(batch, problems, rows, c, self.model)
                (loss * (self.place.world / total)).backward()
                sums[0] += loss.item() / total
        sums[2] = sums[0]
        return self._apply(sums, lam, lr)

    def _validate_edit(self) -> dict[str, float]:
        """The edit loss on the validation set with a fixed corruption (own-answer rows shown random
        replacements instead: the model's answers move as it trains), and how the model judges the
        visible draft tokens: its mean probability of right and of wrong ones, and the AUROC."""
        val, g = self.dataset.val, self.gen_length
        batch = encode(self.tok, val, g)
        fixed = dataclasses.replace(self.cfg, edit_random=self.cfg.edit_random + self.cfg.edit_self, edit_self=0.0)
        c = edit.draw(fixed, len(val), g, self.vocab, self._generator(-1))
        if self._val_drafts is None:
            self._val_drafts = edit.draft_proposals(self._adapter(), self.cfg.edit_drafter_name,
                                                    [p.question for p in val], g)
        mine = torch.arange(self.place.rank, len(val), self.place.world)
        loss_sum, probs, right = 0.0, [], []
        for rows in torch.split(mine, max(1, self.cfg.batch_size // self.cfg.grad_accum)):
            loss, judged = self._edit_terms(batch, val, rows, c, self.student, self._val_drafts)
            loss_sum += loss.item()
            probs += judged.prob
            right += judged.right
        gathered = all_gather(self.place, (loss_sum, probs, right))
        loss_s = sum(x[0] for x in gathered)
        probs = [p for x in gathered for p in x[1]]
        right = [r for x in gathered for r in x[2]]
        n_right = sum(right)
        return {"val_loss": loss_s / (len(val) * g), "val_kl": 0.0, "val_ce": loss_s / (len(val) * g),
                "val_p_right": sum(p for p, r in zip(probs, right) if r) / max(n_right, 1),
                "val_p_wrong": sum(p for p, r in zip(probs, right) if not r) / max(len(right) - n_right, 1),
                "val_wrong_tokens": len(right) - n_right, "val_auroc": auroc(probs, right) or 0.0}

    # -- the trajectory objective (fewstep.training.trajectory)

    def _traj_terms(self, batch: data.Batch, rows: torch.Tensor, r: trajectory.Rollouts, masked: torch.Tensor,
                    model: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(ce [M], entropy [M]) of one micro-batch on its trajectory states (visible: the teacher's tokens)."""
        g = self.gen_length
        x = batch.input_ids[rows].clone()
        x[:, -g:] = r.tokens[rows].masked_fill(masked[rows], self.teacher.mask_id)
        with _autocast(self.device, self.cfg.autocast_bf16):
            logits = logits_of(model, x.to(self.device), batch.attention_mask[rows].to(self.device),
                               self.teacher.shifted_logits)[:, -g:]  # [b, G, V]
        return trajectory.token_terms(logits, r.tokens[rows].to(self.device), masked[rows].to(self.device))

    def _trajectory_step(self, batch: data.Batch, r: trajectory.Rollouts, gen: torch.Generator, lam: float,
                         lr: float) -> dict[str, float]:
        """One optimiser step of the trajectory objective on the whole batch's rollouts ``r`` (every
        process has them all, so the states and the normaliser are the one-process ones)."""
        cfg, b = self.cfg, len(batch.input_ids)
        masked = trajectory.states(r, gen)
        if cfg.traj_verified:
            masked &= r.right[:, None]
        total = max(int(masked.sum()), 1)
        sums = torch.zeros(5, dtype=torch.float64)  # loss, entropy (certainty forcing's support), ce
        self.opt.zero_grad(set_to_none=True)
        micro = self._slices(b)
        for i, rows in enumerate(micro):
            sync = i == len(micro) - 1 or self.place.world == 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                ce, entropy = self._traj_terms(batch, rows, r, masked, self.model)
                loss = ce.sum() + cfg.certainty_weight * entropy.sum()
                (loss * (self.place.world / total)).backward()
                sums += torch.tensor([loss.item(), entropy.sum().item(), ce.sum().item(), 0.0, 0.0],
                                     dtype=torch.float64) / total
        out = self._apply(sums, lam, lr)
        out.update(kl=0.0, entropy=float(sums[1]), rollout_nfe=r.nfe / b, rollout_s=r.seconds,
                   rollout_right=float(r.right.float().mean()))
        return out

    def _validate_trajectory(self) -> dict[str, float]:
        """Cross-entropy on fixed states of the teacher's trajectories of the validation problems."""
        val, g = self.dataset.val, self.gen_length
        batch = encode(self.tok, val, g)
        if self._val_rollouts is None:
            with teacher_view(self.student):  # LoRA: the base weights, adapters off
                self._val_rollouts = self.rollouts.val(val)
        r = self._val_rollouts
        masked = trajectory.states(r, self._generator(-1))
        if self.cfg.traj_verified:
            masked &= r.right[:, None]
        mine = torch.arange(self.place.rank, len(val), self.place.world)
        sums = [0.0, 0.0]
        for rows in torch.split(mine, max(1, self.cfg.batch_size // self.cfg.grad_accum)):
            ce, _ = self._traj_terms(batch, rows, r, masked, self.student)
            sums[0] += ce.sum().item()
            sums[1] += len(ce)
        ce_s, n = all_sum(self.place, sums, self.device if self.device.type == "cuda" else torch.device("cpu"))
        return {"val_loss": ce_s / max(n, 1.0), "val_kl": 0.0, "val_ce": ce_s / max(n, 1.0),
                "val_rollout_right": float(r.right.float().mean())}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on the fixed validation set with fixed masks: the DSCD loss at ``lambda_end`` (the
        schedule moves; the monitored quantity must not), or the masked-token CE for ``mdlm``."""
        cfg, val = self.cfg, self.dataset.val
        self.student.eval()
        if cfg.objective in ("edit", "trajectory"):
            try:
                return self._validate_edit() if cfg.objective == "edit" else self._validate_trajectory()
            finally:
                self.student.train()
        sums = [0.0, 0.0, 0.0]
        batch = encode(self.tok, val, self.gen_length)
        s_mask, t_mask = dscd.nested_masks(batch.answer_mask, self._generator(-1), self.ratios)
        size = max(1, cfg.batch_size // cfg.grad_accum)
        mine = torch.arange(self.place.rank, len(val), self.place.world)
        chunks = list(torch.split(mine, size))
        if self.sharded:  # as many forwards as rank 0 (which has the most rows), idle ones on a stand-in row
            chunks += [mine[:0]] * (-(-len(range(0, len(val), self.place.world)) // size) - len(chunks))
        for rows in chunks:
            kl, ce = self._terms(batch, rows if len(rows) else sharding.idle_rows(), s_mask, t_mask, self.student)
            if not len(rows):
                continue
            sums[0] += kl.sum().item()
            sums[1] += ce.sum().item()
            sums[2] += len(kl)
        kl_s, ce_s, n = all_sum(self.place, sums, self.device if self.device.type == "cuda" else torch.device("cpu"))
        self.student.train()
        kl_m, ce_m = kl_s / n, ce_s / n
        loss = ce_m if cfg.objective == "mdlm" else float(dscd.combine(torch.tensor(kl_m), torch.tensor(ce_m),
                                                                       cfg.lambda_end))
        return {"val_loss": loss, "val_kl": kl_m, "val_ce": ce_m}

    # -- checkpoints

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint (rank 0; under FSDP every process calls this: the state is gathered)."""
        if not (self.place.main or self.sharded):
            return
        model, optim = sharding.full_state(self.student, self.opt, self.cfg, self.place)
        if self.cfg.lora_r:  # the adapters only: the base is the teacher's, unchanged
            model = {k: v for k, v in model.items() if ".lora_" in k}
        if self.place.main:
            ckpt = {"student": model, "optimizer": optim, "state": asdict(self.state)}
            atomic_save(path, functools.partial(torch.save, ckpt))

    def load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location="cpu" if self.sharded else self.device, weights_only=False)
        sharding.load_full_state(self.student, self.opt, ckpt["student"], ckpt["optimizer"], self.cfg, self.place)
        self.state = State(**ckpt["state"])

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The whole student state (every process calls this under FSDP; rank 0 gets it), else None:
        the module's own state is whole."""
        return sharding.full_state(self.student, None, self.cfg, self.place)[0] if self.sharded else None

    def export(self, out: Path) -> None:
        """Save the student in the teacher's layout (rank 0; under FSDP every process calls this)."""
        state = self.full_weights()
        if self.place.main:
            save_model(self.student, self.teacher_dir, out, getattr(torch, self.cfg.save_dtype), state)
