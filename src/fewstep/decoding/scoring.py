"""One step's model call and logits processing, on the active window only.

:func:`window_logits` runs the model and returns logits for the window of positions being decoded
(the active block), never for the whole sequence; :func:`candidates_and_confidence` turns them
into a candidate token and a confidence per position. float64 is used for the softmax only, on
the window: that is what keeps confidences tie-exact with the reference implementations (which
take the softmax of float32 logits in float64) while the step's memory stays block-local.

Shapes: b rows, T sequence, L window length, V vocabulary.
"""

from __future__ import annotations

import torch

from fewstep.strategies import scorers

LAST = -1e30  # confidence given to EOS candidates with eos_confidence=last (finite: still eligible)


def window_logits(model, ids: torch.Tensor, att: torch.Tensor, prompt_pos: torch.Tensor | None, window: slice,
                  cfg_scale: float, embeds: torch.Tensor | None = None, cache=None,
                  cache_rows: torch.Tensor | None = None, cache_window: slice | None = None) -> torch.Tensor:
    """Logits [b, L, V] in float32 for the positions of ``window``, with classifier-free guidance
    when ``cfg_scale`` > 0 (the unconditional pass sees the prompt masked). ``embeds`` [b, T, D]
    replaces the token embeddings as the model's input (embedding priors).

    ``cache`` (:class:`fewstep.models.kvcache.KVCache`), ``cache_rows`` [b] (the rows' places in
    it; with guidance the unconditional rows follow the conditional ones, ``cache.rows // 2``
    further) and ``cache_window`` (None: run everything and refresh the cache) are passed to
    :meth:`fewstep.models.adapter.DiffusionModel.logits`."""
    kw = {}
    if cache is not None:
        rows = torch.arange(ids.shape[0], device=ids.device) if cache_rows is None else cache_rows
        if cfg_scale > 0:
            rows = torch.cat([rows, rows + cache.rows // 2])
        kw = {"cache": cache, "cache_rows": rows, "window": cache_window}
    if cfg_scale > 0:
        assert prompt_pos is not None, "guidance needs the prompt positions"
        un = torch.where(prompt_pos, torch.full_like(ids, model.mask_id), ids)
        both_embeds = None
        if embeds is not None:
            un_embeds = torch.where(prompt_pos[..., None], model.embed(un), embeds)
            both_embeds = torch.cat([embeds, un_embeds])
        both = model.logits(input_ids=None if both_embeds is not None else torch.cat([ids, un]),
                            attention_mask=torch.cat([att, att]), inputs_embeds=both_embeds, positions=window,
                            **kw).float()
        cond, uncond = both.chunk(2)
        return uncond + (cfg_scale + 1) * (cond - uncond)
    if embeds is not None:
        return model.logits(attention_mask=att, inputs_embeds=embeds, positions=window, **kw).float()
    return model.logits(input_ids=ids, attention_mask=att, positions=window, **kw).float()


def candidates_and_confidence(logits: torch.Tensor, cfg, eos_id: int, generator,
                              mask_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [b, L, V] float32 -> candidate ids [b, L], confidence [b, L] (float64), probs
    [b, L, V] (float64 softmax of the processed, noise-free logits). ``logits`` is modified in
    place (EOS penalty, mask suppression): pass a tensor the caller owns. ``generator`` is a
    ``torch.Generator`` or a function returning one (made only when a random draw is needed).

    The mask token is never a candidate (committing it would leave the position masked forever);
    this departs from LLaDA's reference only where the reference would return a mask token.

    With temperature T > 0 the candidate is argmax(logits + T * Gumbel) computed in float64, which
    is LLaDA's argmax(exp(logits) / (-log u)^T) in log space (no overflow). The confidence comes
    from the noise-free softmax, through the scorer that ``remasking`` names."""
    if cfg.eos_logit_penalty > 0:
        logits[..., eos_id] -= cfg.eos_logit_penalty
    if mask_id is not None and mask_id < logits.shape[-1]:
        logits[..., mask_id] = float("-inf")
    if callable(generator):
        generator = generator() if cfg.temperature > 0 or cfg.remasking == "random" else None
    if cfg.temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        cand = (logits.double() - cfg.temperature * torch.log(-torch.log(u))).argmax(-1)
    else:
        cand = logits.argmax(-1)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float64)
    conf = scorers.SCORERS[cfg.remasking](probs, cand, generator)
    if cfg.eos_confidence == "last":
        conf = conf.masked_fill(cand == eos_id, LAST)
    return cand, conf, probs
