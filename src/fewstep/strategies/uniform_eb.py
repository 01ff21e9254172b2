"""``uniform_eb``: DiffusionGemma's sampler on a uniform-state canvas (transformers'
``EntropyBoundSampler``, ``LinearTemperatureScheduleLogitsProcessor`` and
``StableAndConfidentStoppingCriteria``, as its ``DiffusionGemmaGenerationMixin.generate`` runs them).

A block (one canvas) starts from uniformly random tokens (or from a draft's tokens, where a warm
start gives them) and every position is judged at every step. At step ``s`` (0-based) of a block
of at most N = ``max_denoising_steps`` steps, with ``r = N - s`` steps remaining:

1. **temperature**: ``logits / (t_min + (t_max - t_min) * r / N)`` (computed in float32, as
   transformers does) -> the processed logits, also the next step's self-conditioning input;
2. **denoise**: a token per position drawn from their softmax (``sample=False``: the argmax), and
   the argmax itself;
3. **accept** (EB-sampler, arXiv 2505.24857): the positions sorted by the entropy of the processed
   logits, lowest first, are accepted while ``sum of the entropies before it <= entropy_bound``;
   an accepted position takes its drawn token, every other one a fresh uniformly random token;
4. **stop**: a row stops when its argmax canvas equals the argmax canvases of the previous
   ``stability_threshold`` steps (0: always stable) and the mean entropy over the canvas is below
   ``confidence_threshold``, or at the block's last step. A stopped row's block is its argmax
   canvas, with every position from its first EOS on set to EOS (the answer ends there).

Random draws come, per row, from a generator seeded with ``seed``: a row's tokens depend on its
prompt and the seed only, never on the batch; a batch of one draws exactly what transformers'
``generate`` draws after ``torch.manual_seed(seed)`` (the initial canvas, then per step the
sample and the renoising tokens).

:func:`step` is the sampler on tensors (no model); :class:`UniformEntropyBound` keeps, per block,
what the steps carry over (the argmax history, the self-conditioning logits, the generators) for
the decode loop. Shapes: B rows of the batch, b rows of a step, L block length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fewstep.errors import ConfigError
from fewstep.strategies.base import Decision, Policy, StepContext, param, validate

SUMMARY = ("DiffusionGemma's sampler: random-token canvas, every position judged each step (entropy bound, "
           "temperature schedule, stable-and-confident stop)")
MODEL_KIND = "uniform"


@dataclass(frozen=True)
class Params:
    max_denoising_steps: int = param(48, "steps per block at most", lo=1)
    entropy_bound: float = param(0.1, "accept the lowest-entropy positions while the entropies before each sum "
                                      "to at most this (nats)", lo=0)
    t_min: float = param(0.4, "temperature at the block's last step", lo=0)
    t_max: float = param(0.8, "temperature at its first step (the schedule is linear in the steps remaining)",
                         lo=0)
    stability_threshold: int = param(1, "stop once the argmax canvas is unchanged over this many steps (0: "
                                        "stability not required)", lo=0)
    confidence_threshold: float = param(0.005, "... and its mean entropy (nats) is below this", lo=0)
    sample: bool = param(True, "draw the accepted tokens from the tempered distribution (false: take the argmax)")

    def __post_init__(self) -> None:
        validate("uniform_eb", self)
        if self.t_max <= self.t_min:
            raise ConfigError(f"uniform_eb: t_max ({self.t_max}) must exceed t_min ({self.t_min})")
        if self.t_min == 0 and self.sample:
            raise ConfigError("uniform_eb: t_min=0 divides the last step's logits by 0; use t_min > 0")


# settings of the loop that mean nothing, or something else, on a uniform-state canvas
_REFUSED = {"temperature": 0.0, "cfg_scale": 0.0, "cache": "none", "init": ("mask", "inject"),
            "revise_threshold": 0.0, "verify_groups": 1, "eos_logit_penalty": 0.0}


def check(params: Params, cfg) -> None:
    """The loop's settings this strategy cannot honour, refused by name."""
    if cfg.gen_length % cfg.block_length:
        raise ConfigError(f"gen_length ({cfg.gen_length}) must be a multiple of block_length ({cfg.block_length})")
    for key, ok in _REFUSED.items():
        value = getattr(cfg, key)
        if value not in (ok if isinstance(ok, tuple) else (ok,)):
            hint = " (the temperature schedule is t_min / t_max)" if key == "temperature" else ""
            raise ConfigError(f"uniform_eb does not support {key}={value!r}{hint}")


def policy(params: Params, cfg) -> UniformEntropyBound:
    return UniformEntropyBound(params, cfg.seed)


# --- the sampler on tensors ------------------------------------------------------------------------------


def temperature(step: int, n: int, t_min: float, t_max: float) -> torch.Tensor:
    """The temperature at step ``step`` (0-based) of ``n``: transformers' schedule over the steps
    remaining ``r = n - step``, computed as it does (``r`` an int32 tensor, the quotient float32)."""
    remaining = torch.tensor(n - step, dtype=torch.int32)
    return t_min + ((t_max - t_min) * (remaining / n))


def entropy(processed: torch.Tensor) -> torch.Tensor:
    """[b, L, V] processed logits -> [b, L] entropy (nats), as ``torch.distributions.Categorical``."""
    return torch.distributions.Categorical(logits=processed, validate_args=False).entropy()


def accept(ent: torch.Tensor, bound: float) -> torch.Tensor:
    """[b, L] entropies -> [b, L] accepted: sorted ascending, a position is accepted while the
    entropies sorted before it sum to at most ``bound`` (the lowest one always)."""
    sorted_ent, order = torch.sort(ent, dim=-1, descending=False)
    chosen = torch.cumsum(sorted_ent, dim=-1) - sorted_ent <= bound
    return torch.scatter(torch.zeros_like(chosen), -1, order, chosen)


class Draws(NamedTuple):
    """One step's random draws for b rows: [b, L] sampled tokens (None: argmax) and [b, L] renoising tokens."""

    sample: torch.Tensor | None
    noise: torch.Tensor


def draw(probs: torch.Tensor | None, vocab: int, length: int, generators: list[torch.Generator]) -> Draws:
    """Per row, with its own generator: a token per position from ``probs`` [b, L, V] (None: no
    sample), then ``length`` uniformly random tokens (transformers' order within a step)."""
    samples, noise = [], []
    for i, g in enumerate(generators):
        if probs is not None:
            samples.append(torch.multinomial(probs[i].view(-1, vocab), num_samples=1, generator=g).view(1, -1))
        noise.append(torch.randint(0, vocab, (1, length), generator=g, device=g.device))
    return Draws(torch.cat(samples) if probs is not None else None, torch.cat(noise))


class StepOutput(NamedTuple):
    tokens: torch.Tensor  # [b, L] the next canvas: accepted positions their draw, the others noise
    argmax: torch.Tensor  # [b, L] the argmax canvas
    processed: torch.Tensor  # [b, L, V] the tempered logits (the next step's self-conditioning)
    entropy: torch.Tensor  # [b, L]
    accepted: torch.Tensor  # [b, L] bool


def step(logits: torch.Tensor, s: int, params: Params, generators: list[torch.Generator]) -> StepOutput:
    """One step of the sampler on a block's raw logits [b, L, V] (step ``s`` of the block)."""
    processed = logits / temperature(s, params.max_denoising_steps, params.t_min, params.t_max)
    b, length, vocab = processed.shape
    probs = torch.softmax(processed, dim=-1, dtype=torch.float32) if params.sample else None
    drawn = draw(probs, vocab, length, generators)
    argmax = processed.argmax(-1)
    ent = entropy(processed)
    accepted = accept(ent, params.entropy_bound)
    chosen = drawn.sample if drawn.sample is not None else argmax
    return StepOutput(torch.where(accepted, chosen, drawn.noise), argmax, processed, ent, accepted)


def stable(history: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
    """history [b, k, L] (the last k argmax canvases, -1 before the block's first steps), argmax
    [b, L] -> [b] whether every one of them equals ``argmax`` (k = 0: always)."""
    return (history == argmax[:, None, :]).all(-1).all(-1)


def end_at_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[b, L] -> the same with every position from each row's first EOS on set to EOS."""
    after = (tokens == eos_id).long().cumsum(-1) > 0
    return tokens.masked_fill(after, eos_id)


# --- the policy the decode loop drives ----------------------------------------------------------------------


class UniformEntropyBound(Policy):
    """The loop's side of the sampler (``canvas = "uniform"``): the loop fills each block's open
    positions (:meth:`start_canvas`), passes the rows' self-conditioning logits to the model
    (:meth:`conditioning`) and asks for the next canvas (:meth:`resample`)."""

    canvas = "uniform"

    def __init__(self, params: Params, seed: int):
        self.params, self.seed, self.budget = params, seed, params.max_denoising_steps
        self.generators: list[torch.Generator] = []
        self.history: torch.Tensor | None = None  # [B, k, L] argmax canvases of the block's last k steps
        self.previous: torch.Tensor | None = None  # [B, L, V] processed logits of each row's last step

    def _generators(self, rows: torch.Tensor, device: torch.device) -> list[torch.Generator]:
        """The generators of rows ``rows`` [b] (each made, seeded with the seed, at its first use)."""
        need = int(rows.max()) + 1 if rows.numel() else 0
        while len(self.generators) < need:
            self.generators.append(torch.Generator(device=device).manual_seed(self.seed))
        return [self.generators[i] for i in rows.tolist()]

    def start_block(self, eligible: torch.Tensor) -> None:
        b, length = eligible.shape
        k = self.params.stability_threshold
        self.history = torch.full((b, k, length), -1, dtype=torch.long, device=eligible.device)
        self.previous = None

    def start_canvas(self, tokens: torch.Tensor, open_: torch.Tensor, vocab: int) -> None:
        """In place: the block's ``tokens`` [B, L]: in every row with an open (undecided) position,
        a canvas of uniformly random tokens is drawn and each open position holding no token (< 0)
        takes it; draft tokens stay (transformers draws the canvas even when one is given)."""
        rows = open_.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        noise = torch.cat([torch.randint(0, vocab, (1, tokens.shape[1]), generator=g, device=g.device)
                           for g in self._generators(rows, tokens.device)])
        fill = open_[rows] & (tokens[rows] < 0)
        tokens[rows] = torch.where(fill, noise, tokens[rows])

    def conditioning(self, rows: torch.Tensor, s: int) -> torch.Tensor | None:
        """[b, L, V] the processed logits of the rows' previous step (None at the block's first)."""
        return None if s == 0 or self.previous is None else self.previous[rows]

    def resample(self, logits: torch.Tensor, rows: torch.Tensor, s: int, eos_id: int) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """Step ``s`` of the block for rows ``rows`` [b] from their raw logits [b, L, V] -> the next
        canvas [b, L] (a stopped row: its argmax canvas, ended at its first EOS) and [b] stopped."""
        assert self.history is not None, "start_block comes first"
        out = step(logits, s, self.params, self._generators(rows, logits.device))
        hist = self.history[rows]
        done = stable(hist, out.argmax) & (out.entropy.mean(-1) < self.params.confidence_threshold)
        done |= s == self.budget - 1
        if hist.shape[1]:
            self.history[rows] = torch.cat([hist[:, 1:], out.argmax[:, None]], dim=1)
        if self.previous is None:
            self.previous = out.processed.new_zeros((self.history.shape[0], *out.processed.shape[1:]))
        self.previous[rows] = out.processed
        return torch.where(done[:, None], end_at_eos(out.argmax, eos_id), out.tokens), done

    def step(self, ctx: StepContext) -> Decision:
        raise NotImplementedError("uniform_eb resamples the whole canvas: the loop calls resample()")
