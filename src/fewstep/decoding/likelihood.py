"""The likelihood of a continuation under a masked diffusion model: a Monte-Carlo estimate of the
masked-diffusion bound (LLaDA's estimator, :func:`mc_loglikelihood`) and a one-forward greedy check
(:func:`greedy_in_one_step`). Used by the lm-eval model (:mod:`fewstep.integrations.lm_eval`) for
``loglikelihood`` requests; ``model`` is a loaded :class:`~fewstep.models.adapter.DiffusionModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewstep.errors import PromptTooLongError

DEFAULT_MC_NUM = 32  # Monte-Carlo samples per estimate
DEFAULT_MC_BATCH = 16  # samples per forward


def chunk_sizes(total: int, size: int) -> list[int]:
    """``total`` split into chunks of at most ``size``: ``chunk_sizes(10, 4) == [4, 4, 2]``."""
    return [min(size, total - i) for i in range(0, total, size)]


def mask_continuation(
    seq: torch.Tensor, prefix_len: int, n: int, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` noisy copies of ``seq`` [T] with some continuation tokens masked (the prefix never is).

    Copy i masks exactly l_i of the L continuation tokens, at random positions; the l_i are spread
    evenly over 1..L from a random start (LLaDA's stratified draw of l ~ U{1..L}).
    -> noisy ids [n, T], masked positions [n, T] (bool), weights L / l_i [n].
    """
    length = seq.numel() - prefix_len
    start = int(torch.randint(1, length + 1, (), generator=generator))
    counts = torch.round(torch.linspace(float(start), start + (n - 1) * length / n, n)).long()
    counts = (counts - 1) % length + 1  # [n] in 1..L
    order = torch.rand(n, length, generator=generator).argsort(dim=1)  # a random permutation per copy
    in_target = order < counts[:, None]  # [n, L]: exactly counts[i] True per row
    masked = torch.cat([torch.zeros(n, prefix_len, dtype=torch.bool), in_target], dim=1)
    noisy = torch.where(masked, torch.full_like(seq, mask_id), seq.expand(n, -1))
    return noisy, masked, length / counts.double()


def fit_context(prefix: list[int], target: list[int], max_length: int) -> list[int]:
    """The prefix, cut from the left so that prefix + target fits the model's context."""
    if len(target) > max_length:
        raise PromptTooLongError(f"a continuation of {len(target)} tokens exceeds the model's context of "
                                 f"{max_length} tokens")
    room = max_length - len(target)
    return prefix[len(prefix) - room:] if len(prefix) > room else prefix


def scored_region(target: list[int], eos_id: int, gen_length: int, padding: str) -> list[int]:
    """The tokens a loglikelihood request scores: the continuation, followed (``padding="eos"``) by EOS
    up to ``gen_length`` tokens, the layout the model was trained on (answers padded with EOS to the
    generation length, padding included in the loss); ``padding="none"`` scores the continuation alone."""
    if padding == "eos":
        return target + [eos_id] * max(0, gen_length - len(target))
    return list(target)


@torch.no_grad()
def mc_loglikelihood(model, prefix: list[int], target: list[int], mc_num: int = DEFAULT_MC_NUM,
                     batch_size: int = DEFAULT_MC_BATCH, seed: int = 0) -> float:
    """Monte-Carlo estimate of log p(target | prefix) for a masked diffusion model (LLaDA's estimator).

    Each of ``mc_num`` samples masks l ~ U{1..L} of the L target tokens (prefix unmasked; the l are
    stratified over the samples), and scores the cross-entropy of the masked tokens, weighted by L / l;
    the estimate is minus their mean. In expectation it is the masked-diffusion bound (ELBO) on the
    log-likelihood, the quantity the training loss estimates, so it is a lower bound. ``target`` is
    scored whole: pass :func:`scored_region` to score an answer with its EOS padding. Samples run
    ``batch_size`` at a time; ``seed`` makes the estimate reproducible. Costs ``mc_num`` sequence forwards.
    """
    if not target:
        return 0.0
    prefix = fit_context(prefix, target, model.max_length)
    seq = torch.tensor(prefix + target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for n in chunk_sizes(mc_num, batch_size):
        noisy, masked, weight = mask_continuation(seq, len(prefix), n, model.mask_id, generator)
        logits = model.logits(input_ids=noisy.to(model.device)).float().cpu()  # [n, T, V]
        ce = F.cross_entropy(logits[masked], seq.expand(n, -1)[masked], reduction="none").double()
        rows = torch.arange(n)[:, None].expand(n, seq.numel())[masked]
        per_sample = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, ce)
        total += float((per_sample * weight).sum())
    return -total / mc_num


@torch.no_grad()
def greedy_in_one_step(model, prefix: list[int], target: list[int]) -> bool:
    """Whether one forward over the prefix and an all-masked target predicts every target token
    as its argmax. LLaDA's check unmasks one token per step instead (L forwards); this one costs a
    single forward, and the two can disagree either way."""
    if not target:
        return True
    prefix = fit_context(prefix, target, model.max_length)
    ids = torch.tensor([prefix + [model.mask_id] * len(target)], dtype=torch.long, device=model.device)
    guess = model.logits(input_ids=ids)[0, len(prefix):].argmax(-1).cpu()
    return bool((guess == torch.tensor(target)).all())
