"""Training losses: the masked-diffusion objective and next-token prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewstep.training.data import Batch


def mdlm_masks(answer_mask: torch.Tensor, generator: torch.Generator, eps: float = 1e-3) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """LLaDA's corruption of a whole batch: per row a mask ratio t ~ U(0, 1) (stratified over the
    batch to lower variance; each t is still uniform), each answer token masked with probability t,
    the prompt never masked. answer_mask [B, T] -> t [B], masked [B, T]. Drawn for the whole batch
    from one generator, so any split of its rows (processes, micro-batches) sees the same masks."""
    b = answer_mask.shape[0]
    u = torch.rand((), generator=generator)
    t = ((torch.arange(b) + u) / b) * (1 - eps) + eps  # [B]
    t = t[torch.randperm(b, generator=generator)]
    masked = (torch.rand(answer_mask.shape, generator=generator) < t[:, None]) & answer_mask.cpu()  # [B, T]
    return t, masked


def mdlm_row_losses(model, batch: Batch, t: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The masked-diffusion loss of each row [B]: cross-entropy on its masked tokens weighted 1/t,
    normalised by its answer length (``t`` [B] and ``masked`` [B, T] from :func:`mdlm_masks`)."""
    ids, ans = batch.input_ids, batch.answer_mask  # [B, T]
    masked, t = masked.to(ids.device), t.to(ids.device)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(input_ids=noisy, attention_mask=batch.attention_mask).logits  # [B, T, V]
    ce = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    ce[masked] = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # [M]
    return (ce / t[:, None]).sum(1) / ans.sum(1)  # [B]


def mdlm_loss(model, batch: Batch, mask_id: int, generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """LLaDA's supervised objective on a batch (:func:`mdlm_masks`, :func:`mdlm_row_losses`): the mean of its rows."""
    t, masked = mdlm_masks(batch.answer_mask, generator, eps)
    return mdlm_row_losses(model, batch, t, masked, mask_id).mean()


def causal_loss(model, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on the answer (and its closing EOS) only."""
    ids, att = batch.input_ids, batch.attention_mask
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, :-1]  # [B, T-1, V]
    target_mask = batch.answer_mask[:, 1:]
    return F.cross_entropy(logits[target_mask].float(), ids[:, 1:][target_mask])
