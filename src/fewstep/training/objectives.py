"""Training losses: the masked-diffusion objective and next-token prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewstep.training.data import Batch


def mdlm_loss(model, batch: Batch, mask_id: int, generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """LLaDA's supervised objective: per row a mask ratio t ~ U(0, 1) (stratified over the batch to
    lower variance; each t is still uniform), each answer token masked with probability t, the
    prompt never masked; cross-entropy on masked tokens weighted 1/t, normalised by answer length."""
    ids, ans = batch.input_ids, batch.answer_mask  # [B, T]
    b = ids.shape[0]
    u = torch.rand((), generator=generator)
    t = ((torch.arange(b) + u) / b) * (1 - eps) + eps  # [B]
    t = t[torch.randperm(b, generator=generator)]
    masked = (torch.rand(ids.shape, generator=generator) < t[:, None]) & ans  # [B, T]
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(input_ids=noisy, attention_mask=batch.attention_mask).logits  # [B, T, V]
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # [M]
    weights = (1.0 / t)[:, None].expand_as(ids)[masked] / ans.sum(1, keepdim=True).expand_as(ids)[masked]
    return (ce * weights).sum() / b


def causal_loss(model, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on the answer (and its closing EOS) only."""
    ids, att = batch.input_ids, batch.attention_mask
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, :-1]  # [B, T-1, V]
    target_mask = batch.answer_mask[:, 1:]
    return F.cross_entropy(logits[target_mask].float(), ids[:, 1:][target_mask])
