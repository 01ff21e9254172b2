"""Discrete-space consistency distillation (DSCD, CD4LM arXiv 2601.02236; design.md section 1).

The algorithm only: nested masks, the loss and the lambda schedule. The training run around it
(data, teacher and student, checkpoints, processes) is :mod:`fewstep.training.distill`.

Per training answer of length L (the answer region the decoder fills: answer tokens plus their
EOS padding), ``r_s ~ U(0.4, 0.9)``, ``r_t = clip(r_s * U(0.3, 0.7), 0.1, 0.6)``,
``n_s = max(floor(L r_s), max(2, ceil(0.1 L)))``, ``n_t = min(floor(L r_t), n_s)``; short answers:
L < 20 caps r_s at 0.5, L <= 10 uses n_s = 2, n_t = 1. One random permutation of the answer
positions: the student sees its first n_s masked, the teacher its first n_t, so the teacher's
masked set is a subset of the student's (the teacher sees a cleaner state). The prompt is never
masked. Loss over the student-masked positions:
``lambda * min(T^2 KL(p_teacher^T || p_student^T), kl_clip) + (1 - lambda) * min(CE(student, x0), ce_clip)``.

Two readings of the design fixed here:

- The clips apply per token (then the mean over the masked positions), so one outlier token
  loses its gradient rather than the whole batch.
- At positions the student must predict but the teacher sees unmasked (student mask minus teacher
  mask), the teacher's prediction of the clean sequence is the token it sees ("clean", the
  carry-over parameterisation of masked diffusion: a masked diffusion model is trained only on
  masked positions, so its logits at visible positions carry no trained prediction); the KL there
  is ``-log p_student^T(x0)``. ``visible_target="logits"`` uses the teacher's raw logits instead.

Shapes: B rows, T sequence, V vocabulary, M masked positions selected from [B, T].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHORT = 20  # answers shorter than this cap r_s at SHORT_RS_CAP
SHORT_RS_CAP = 0.5
VERY_SHORT = 10  # answers this long or shorter: n_s = 2, n_t = 1


@dataclass(frozen=True)
class MaskRatios:
    rs_min: float = 0.4
    rs_max: float = 0.9
    rt_scale_min: float = 0.3
    rt_scale_max: float = 0.7
    rt_min: float = 0.1
    rt_max: float = 0.6


def mask_counts(lengths: torch.Tensor, generator: torch.Generator, ratios: MaskRatios = MaskRatios()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_s, n_t) per row [B] for answer lengths [B] (long), with the short-answer rules."""
    b = lengths.shape[0]
    length = lengths.double()
    u_s = torch.rand(b, generator=generator, dtype=torch.float64)
    u_t = torch.rand(b, generator=generator, dtype=torch.float64)
    r_s = ratios.rs_min + (ratios.rs_max - ratios.rs_min) * u_s
    r_s = torch.where(length < SHORT, r_s.clamp(max=SHORT_RS_CAP), r_s)
    scale = ratios.rt_scale_min + (ratios.rt_scale_max - ratios.rt_scale_min) * u_t
    r_t = (r_s * scale).clamp(ratios.rt_min, ratios.rt_max)
    floor_min = torch.ceil(0.1 * length).clamp(min=2)
    n_s = torch.maximum(torch.floor(length * r_s), floor_min)
    n_t = torch.minimum(torch.floor(length * r_t), n_s)
    very_short = length <= VERY_SHORT
    n_s = torch.where(very_short, torch.full_like(n_s, 2.0), n_s)
    n_t = torch.where(very_short, torch.full_like(n_t, 1.0), n_t)
    n_s = torch.minimum(n_s, length)  # an answer of one token cannot have two masked
    n_t = torch.minimum(n_t, n_s)
    return n_s.long(), n_t.long()


def nested_masks(answer_mask: torch.Tensor, generator: torch.Generator, ratios: MaskRatios = MaskRatios()
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher masks [B, T] (bool) over the answer positions of ``answer_mask`` [B, T];
    teacher ⊆ student. The counts come from :func:`mask_counts`, the order from one random
    permutation of each row's answer positions."""
    n_s, n_t = mask_counts(answer_mask.sum(1), generator, ratios)  # [B], [B]
    keys = torch.rand(answer_mask.shape, generator=generator)  # [B, T] in [0, 1)
    keys = keys.masked_fill(~answer_mask.cpu(), 2.0)  # non-answer positions sort last
    rank = keys.argsort(dim=1).argsort(dim=1)  # [B, T] place of each position in the permutation
    student = rank < n_s[:, None]
    teacher = rank < n_t[:, None]
    return student.to(answer_mask.device), teacher.to(answer_mask.device)


def lambda_at(step: int, steps: int, start: float = 0.9, end: float = 0.5, hold: float = 0.1) -> float:
    """KL weight of optimiser step ``step`` (0-based) of ``steps``: ``start`` for the first
    ``hold`` fraction of the steps, then a cosine from ``start`` down to ``end`` at the last step."""
    held = int(math.ceil(hold * steps))
    if step < held:
        return start
    progress = min(1.0, (step - held) / max(1, steps - 1 - held))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def token_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, ids: torch.Tensor,
                student_mask: torch.Tensor, teacher_mask: torch.Tensor, temperature: float = 2.0,
                kl_clip: float = 5.0, ce_clip: float = 5.0, visible_target: str = "clean"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped per-token terms over the student-masked positions: (kl [M], ce [M]), both float32.

    ``kl = min(T^2 KL(softmax(teacher / T) || softmax(student / T)), kl_clip)`` (zeros when
    ``teacher_logits`` is None), ``ce = min(CE(student, x0), ce_clip)``; see the module docstring
    for the target at teacher-visible positions."""
    s = student_logits[student_mask].float()  # [M, V]
    x0 = ids[student_mask]  # [M]
    ce = F.cross_entropy(s, x0, reduction="none").clamp(max=ce_clip)  # [M]
    if teacher_logits is None:
        return torch.zeros_like(ce), ce
    t2 = temperature * temperature
    log_ps = F.log_softmax(s / temperature, dim=-1)  # [M, V]
    log_pt = F.log_softmax(teacher_logits[student_mask].float() / temperature, dim=-1)  # [M, V]
    kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)  # [M] KL(pt || ps)
    if visible_target == "clean":
        visible = ~teacher_mask[student_mask]  # [M] the teacher sees x0 there
        kl = torch.where(visible, -log_ps.gather(-1, x0[:, None])[:, 0], kl)
    return (t2 * kl).clamp(max=kl_clip), ce


def combine(kl: torch.Tensor, ce: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-token DSCD loss [M]: ``lam * kl + (1 - lam) * ce``."""
    return lam * kl + (1 - lam) * ce
