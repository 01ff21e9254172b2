"""The decode loop: one streaming generator that every strategy, the CLI and evaluation consume.

Per row the loop keeps the canvas (prompt, left-padded, then ``gen_length`` positions), the step
at which each generation position was committed and the row's forward count (NFE). A step is:
model input -> one forward (only for rows with work left) -> logits processing (guidance,
Gumbel noise) -> scoring -> commit -> an event. Blocks are decoded left to right; a block is
done when it holds no mask.

Shapes: B rows, P padded prompt length, G = gen_length, T = P + G, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError, PromptTooLongError
from fewstep.models.adapter import DiffusionModel
from fewstep.strategies import llada, scorers


@dataclass
class StepEvent:
    """What one step did. Tensors are on the CPU; ``canvas`` is a snapshot of the generation region."""

    step: int  # global step index (0-based)
    block: int
    committed: torch.Tensor  # [B, G] bool: positions committed at this step
    canvas: torch.Tensor  # [B, G] token ids after the step (mask id where still masked)
    nfe: torch.Tensor  # [B] forward passes so far, per row
    committed_at: torch.Tensor  # [B, G] step at which each position was committed (-1: not yet)
    done: bool  # True on the last event of the decode


def _canvas(model: DiffusionModel, prompts: Sequence[Sequence[int]], gen_length: int):
    """Left-padded prompts followed by masks. -> ids [B, T], attention [B, T], P."""
    p = max(len(x) for x in prompts)
    b = len(prompts)
    ids = torch.full((b, p + gen_length), model.pad_id, dtype=torch.long)
    att = torch.zeros((b, p + gen_length), dtype=torch.long)
    for i, x in enumerate(prompts):  # building the batch, not the hot path
        ids[i, p - len(x):p] = torch.tensor(list(x), dtype=torch.long)
        att[i, p - len(x):] = 1
    ids[:, p:] = model.mask_id
    return ids.to(model.device), att.to(model.device), p


def _forward(model: DiffusionModel, ids, att, prompt_pos, cfg: DecodeConfig) -> torch.Tensor:
    """Logits [b, T, V] in float32, with classifier-free guidance when cfg_scale > 0."""
    if cfg.cfg_scale > 0:
        un = torch.where(prompt_pos, torch.full_like(ids, model.mask_id), ids)
        both = model.logits(input_ids=torch.cat([ids, un]), attention_mask=torch.cat([att, att])).float()
        cond, uncond = both.chunk(2)
        return uncond + (cfg.cfg_scale + 1) * (cond - uncond)
    return model.logits(input_ids=ids, attention_mask=att).float()


def candidates_and_confidence(logits: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator):
    """logits [b, G, V] -> candidate ids [b, G], confidence [b, G] (float64).

    With temperature T > 0 the candidate is argmax(logits + T * Gumbel) computed in float64, which
    is LLaDA's argmax(exp(logits) / (-log u)^T) in log space (no overflow). The confidence comes
    from the noise-free softmax (or is uniform random for ``random`` remasking)."""
    if cfg.temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        cand = (logits.double() - cfg.temperature * torch.log(-torch.log(u))).argmax(-1)
    else:
        cand = logits.argmax(-1)
    probs = torch.softmax(logits.double(), dim=-1)
    scorer = scorers.random if cfg.remasking == "random" else scorers.probability
    return cand, scorer(probs, cand, generator)


def check_prompts(model: DiffusionModel, prompts: Sequence[Sequence[int]], gen_length: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty")
        if len(p) + gen_length > model.max_length:
            raise PromptTooLongError(
                f"prompt {i} has {len(p)} tokens; with gen_length={gen_length} it exceeds the model's "
                f"context of {model.max_length} tokens"
            )


def decode(model: DiffusionModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig) -> Iterator[StepEvent]:
    """Decode a batch of tokenised prompts, yielding one :class:`StepEvent` per step."""
    if cfg.strategy != "llada":
        raise ConfigError(f"strategy {cfg.strategy!r} needs a causal model; {model.name} is a diffusion model")
    if getattr(model, "mask_id", -1) < 0:
        raise ConfigError(f"{model.name} is not a masked diffusion model")
    check_prompts(model, prompts, cfg.gen_length)
    ids, att, p = _canvas(model, prompts, cfg.gen_length)
    b, g, dev = ids.shape[0], cfg.gen_length, ids.device
    prompt_pos = torch.zeros_like(ids, dtype=torch.bool)
    prompt_pos[:, :p] = att[:, :p].bool()
    nfe = torch.zeros(b, dtype=torch.long, device=dev)
    committed_at = torch.full((b, g), -1, dtype=torch.long, device=dev)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    policy = llada.FixedSchedule(cfg.steps_per_block)
    cost = 2 if cfg.cfg_scale > 0 else 1
    step = 0
    for blk in range(cfg.num_blocks):
        in_block = torch.zeros(g, dtype=torch.bool, device=dev)
        in_block[blk * cfg.block_length:(blk + 1) * cfg.block_length] = True
        policy.start_block((ids[:, p:] == model.mask_id) & in_block)
        for s in range(policy.max_steps()):
            gen = ids[:, p:]  # [B, G] view
            eligible = (gen == model.mask_id) & in_block  # [B, G]
            rows = eligible.any(1) & (policy.schedule[:, s] > 0)  # [B] rows with work this step
            if not rows.any():
                continue
            sub = rows.nonzero().squeeze(1) if not rows.all() else None
            pick = (lambda t: t) if sub is None else (lambda t: t[sub])
            logits = _forward(model, pick(ids), pick(att), pick(prompt_pos), cfg)[:, p:]  # [b, G, V]
            cand, conf = candidates_and_confidence(logits, cfg, generator)
            full_cand = torch.zeros_like(gen)
            full_conf = torch.full((b, g), float("-inf"), dtype=torch.float64, device=dev)
            if sub is None:
                full_cand, full_conf = cand, conf
            else:
                full_cand[sub], full_conf[sub] = cand, conf
            full_conf = full_conf.masked_fill(~eligible, float("-inf"))
            commit = policy.step(full_conf, s) & rows[:, None]  # [B, G]
            ids[:, p:] = torch.where(commit, full_cand, gen)
            committed_at[commit] = step
            nfe += rows.long() * cost
            last = blk == cfg.num_blocks - 1 and not ((ids[:, p:] == model.mask_id).any())
            yield StepEvent(step, blk, commit.cpu(), ids[:, p:].cpu(), nfe.cpu(), committed_at.cpu(), last)
            step += 1
    if step == 0 or not last:
        yield StepEvent(step, cfg.num_blocks - 1, torch.zeros(b, g, dtype=torch.bool), ids[:, p:].cpu(),
                        nfe.cpu(), committed_at.cpu(), True)
