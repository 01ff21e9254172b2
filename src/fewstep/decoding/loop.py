"""The decode loop: one streaming generator that every strategy, the CLI and evaluation consume.

Per row the loop keeps the canvas (prompt, left-padded, then ``gen_length`` positions), the step
at which each generation position was committed and the row's forward count (NFE). A step is:

1. rows with work: rows whose current block still holds masks (and, for ``llada``, whose
   schedule commits anything at this step); finished rows take no forward;
2. one forward over those rows -> logits of the generation region;
3. logits processing: guidance, EOS logit penalty, Gumbel noise -> candidates;
4. scoring -> confidence (EOS confidence lowered with ``eos_confidence=last``);
5. commit: the strategy's policy picks masked positions of the current block;
6. early stop (``early_stop``): when a row completes a block and its generation, from its first
   EOS up to the end of that block, is all EOS, every later position is filled with EOS and the
   row takes no more forwards. A row whose answer has ended is thus never charged for blocks
   it would only fill with EOS, while a row that wrote EOS and then more text keeps decoding;
7. an event describing the step.

Blocks are decoded left to right; a block is done when it holds no mask.

Shapes: B rows, P padded prompt length, G = gen_length, T = P + G, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError, PromptTooLongError
from fewstep.models.adapter import DiffusionModel
from fewstep.strategies import make_policy, scorers
from fewstep.strategies.base import StepContext

LAST = -1e30  # confidence given to EOS candidates with eos_confidence=last (finite: still eligible)


@dataclass
class StepEvent:
    """What one step did. Tensors are on the CPU; ``canvas`` is a snapshot of the generation region."""

    step: int  # global step index (0-based)
    block: int
    committed: torch.Tensor  # [B, G] bool: positions committed at this step (early-stop fills included)
    revoked: torch.Tensor  # [B, G] bool: positions sent back to mask at this step
    canvas: torch.Tensor  # [B, G] token ids after the step (mask id where still masked)
    nfe: torch.Tensor  # [B] forward passes so far, per row
    committed_at: torch.Tensor  # [B, G] step at which each position was committed (-1: not yet)
    done: bool  # True on the last event of the decode


def _snap(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that later steps cannot mutate (``.cpu()`` alone aliases CPU tensors)."""
    return t.detach().to("cpu", copy=True)


def check_prompts(model, prompts: Sequence[Sequence[int]], gen_length: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty")
        if len(p) + gen_length > model.max_length:
            raise PromptTooLongError(
                f"prompt {i} has {len(p)} tokens; with gen_length={gen_length} it exceeds the model's "
                f"context of {model.max_length} tokens"
            )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, extra: int = 0):
    """Prompts right-aligned in a [B, P + extra] tensor. -> ids, attention (1 on real tokens), P."""
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p + extra), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), p + extra), dtype=torch.long)
    for i, x in enumerate(prompts):  # building the batch once, not the hot path
        ids[i, p - len(x):p] = torch.tensor(list(x), dtype=torch.long)
        att[i, p - len(x):] = 1
    return ids, att, p


def _forward(model: DiffusionModel, ids, att, prompt_pos, cfg: DecodeConfig) -> torch.Tensor:
    """Logits [b, T, V] in float32, with classifier-free guidance when cfg_scale > 0."""
    if cfg.cfg_scale > 0:
        un = torch.where(prompt_pos, torch.full_like(ids, model.mask_id), ids)
        both = model.logits(input_ids=torch.cat([ids, un]), attention_mask=torch.cat([att, att])).float()
        cond, uncond = both.chunk(2)
        return uncond + (cfg.cfg_scale + 1) * (cond - uncond)
    return model.logits(input_ids=ids, attention_mask=att).float()


def candidates_and_confidence(logits: torch.Tensor, cfg: DecodeConfig, eos_id: int, generator: torch.Generator,
                              mask_id: int | None = None):
    """logits [b, G, V] -> candidate ids [b, G], confidence [b, G] (float64).

    The mask token is never a candidate (committing it would leave the position masked forever);
    this departs from LLaDA's reference only where the reference would return a mask token.

    With temperature T > 0 the candidate is argmax(logits + T * Gumbel) computed in float64, which
    is LLaDA's argmax(exp(logits) / (-log u)^T) in log space (no overflow). The confidence comes
    from the noise-free softmax, through the scorer that ``remasking`` names."""
    if cfg.eos_logit_penalty > 0 or mask_id is not None:
        logits = logits.clone()
        logits[..., eos_id] -= cfg.eos_logit_penalty
        if mask_id is not None and mask_id < logits.shape[-1]:
            logits[..., mask_id] = float("-inf")
    if cfg.temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        cand = (logits.double() - cfg.temperature * torch.log(-torch.log(u))).argmax(-1)
    else:
        cand = logits.argmax(-1)
    probs = torch.softmax(logits.double(), dim=-1)
    conf = scorers.SCORERS[cfg.remasking](probs, cand, generator)
    if cfg.eos_confidence == "last":
        conf = conf.masked_fill(cand == eos_id, LAST)
    return cand, conf


def ended_rows(gen: torch.Tensor, upto: int, eos_id: int) -> torch.Tensor:
    """[B] bool: rows whose gen[:, :upto] has an EOS and is all EOS from the first EOS on."""
    is_eos = gen[:, :upto] == eos_id  # [B, u]
    after_first = is_eos.long().cumsum(1) > 0  # [B, u] at or after the first EOS
    return is_eos.any(1) & (is_eos | ~after_first).all(1)


def decode(model: DiffusionModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig) -> Iterator[StepEvent]:
    """Decode a batch of tokenised prompts, yielding one :class:`StepEvent` per step."""
    if cfg.strategy == "ar":
        raise ConfigError(f"strategy 'ar' needs a causal model; {model.name} is a diffusion model")
    if getattr(model, "mask_id", -1) < 0:
        raise ConfigError(f"{model.name} is not a masked diffusion model")
    check_prompts(model, prompts, cfg.gen_length)
    ids, att, p = left_pad(prompts, model.pad_id, cfg.gen_length)
    ids, att = ids.to(model.device), att.to(model.device)
    ids[:, p:] = model.mask_id
    b, g, dev, mask_id = ids.shape[0], cfg.gen_length, ids.device, model.mask_id
    prompt_pos = torch.zeros_like(ids, dtype=torch.bool)
    prompt_pos[:, :p] = att[:, :p].bool()
    nfe = torch.zeros(b, dtype=torch.long, device=dev)
    committed_at = torch.full((b, g), -1, dtype=torch.long, device=dev)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    policy = make_policy(cfg)
    cost = 2 if cfg.cfg_scale > 0 else 1
    no_revoke = torch.zeros((b, g), dtype=torch.bool)
    step = 0
    for blk in range(cfg.num_blocks):
        lo, hi = blk * cfg.block_length, (blk + 1) * cfg.block_length
        in_block = torch.zeros(g, dtype=torch.bool, device=dev)
        in_block[lo:hi] = True
        policy.start_block((ids[:, p:] == mask_id) & in_block)
        for s in range(policy.max_steps()):
            gen = ids[:, p:]  # [B, G] view
            eligible = (gen == mask_id) & in_block  # [B, G]
            rows = eligible.any(1)  # [B]
            wanted = policy.rows_needing_forward(s)
            if wanted is not None:
                rows &= wanted
            if not rows.any():
                continue
            sub = None if rows.all() else rows.nonzero().squeeze(1)
            if sub is None:
                logits = _forward(model, ids, att, prompt_pos, cfg)[:, p:]  # [B, G, V]
            else:
                logits = _forward(model, ids[sub], att[sub], prompt_pos[sub], cfg)[:, p:]  # [b, G, V]
            cand, conf = candidates_and_confidence(logits, cfg, model.eos_id, generator, mask_id)
            if sub is not None:  # scatter the active rows' results back to full batch shape
                cand = torch.zeros_like(gen).index_copy_(0, sub, cand)
                conf = torch.full((b, g), float("-inf"), dtype=conf.dtype, device=dev).index_copy_(0, sub, conf)
            eligible &= rows[:, None]
            progress = (gen != mask_id).double().mean(1)  # [B]
            ctx = StepContext(conf.masked_fill(~eligible, float("-inf")), cand, eligible, s, progress, model.eos_id)
            commit = policy.step(ctx) & eligible  # [B, G]
            ids[:, p:] = torch.where(commit, cand, gen)
            committed_at.masked_fill_(commit, step)
            nfe += rows.long() * cost
            gen = ids[:, p:]
            if cfg.early_stop and hi < g:
                stop = ~(gen[:, :hi] == mask_id).any(1) & ended_rows(gen, hi, model.eos_id)
                stop &= (gen[:, hi:] == mask_id).any(1)
                if stop.any():
                    fill = stop[:, None] & (gen == mask_id)
                    ids[:, p:] = gen.masked_fill(fill, model.eos_id)
                    committed_at.masked_fill_(fill, step)
                    commit |= fill
            last = not (ids[:, p:] == mask_id).any()
            yield StepEvent(step, blk, _snap(commit), no_revoke, _snap(ids[:, p:]), _snap(nfe), _snap(committed_at),
                            last)
            step += 1
            if last:
                return
        if ((ids[:, p:] == mask_id) & in_block).any():
            raise RuntimeError(f"strategy {cfg.strategy!r} left masks in block {blk} after {policy.max_steps()} steps")
    # Unreachable for a terminating policy: every block completes, so the last step returned.
    raise RuntimeError("decode ended without completing the generation")
