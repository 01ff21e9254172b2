"""What a commit policy sees at each step, what it decides, and the interface every policy implements.

A policy is made per decode from its parameters (a frozen dataclass declared in the strategy's own
module), told when a block starts, and asked at each step what to do with the positions of the
active block: which to **commit** and which to **revoke** (the shape of diffusers' block-refinement
scheduler, whose ``transfer_index`` / ``editing_transfer_index`` play the same two roles).

- commit at a masked position writes the step's candidate token there; commit at a provisional
  position (a token injected from a draft and not yet confirmed) confirms the token it holds;
- revoke sends a provisional or committed position back to mask.

The loop enforces termination, not the policy: at the block's last allowed step (``max_steps()``)
every undecided position of the block is committed and revocations are ignored.

Every tensor is block-local: B rows, L = block length, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch

from fewstep.errors import ConfigError


@dataclass
class StepContext:
    confidence: torch.Tensor  # [B, L] float64 score of each candidate, -inf where not eligible
    candidates: torch.Tensor  # [B, L] the token each position would take
    eligible: torch.Tensor  # [B, L] bool: masked positions of the block, in rows that took this forward
    step: int  # step index within the block, from 0
    progress: torch.Tensor | None  # [B] fraction of the generation committed before this step (None
    # unless the policy sets ``uses_progress``: it costs a reduction per step)
    eos_id: int
    probs: torch.Tensor | None = None  # [B, L, V] float64 softmax of the processed logits
    tokens: torch.Tensor | None = None  # [B, L] current tokens (the mask id where masked)
    provisional: torch.Tensor | None = None  # [B, L] bool: injected tokens not yet confirmed


@dataclass
class Decision:
    commit: torch.Tensor  # [B, L] bool
    revoke: torch.Tensor | None = None  # [B, L] bool (None: nothing)
    edit: torch.Tensor | None = None  # [B, L] bool: committed positions that take this step's candidate


class CommitPolicy(Protocol):
    def start_block(self, eligible: torch.Tensor) -> None:
        """eligible [B, L]: the masked positions of the block that starts now."""

    def max_steps(self) -> int:
        """Steps after which the loop completes the block."""

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        """[B] bool of rows that commit anything at this step (None: every row with work)."""

    def step(self, ctx: StepContext) -> Decision:
        """What to commit and revoke at this step."""


def at_least_one(confidence: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Add each row's single most confident eligible position to ``chosen``. [B, L] -> [B, L]."""
    best = confidence.argmax(dim=1, keepdim=True)  # [B, 1]
    # chosen positions are eligible (finite), so writing isfinite(best) there never unsets one
    return chosen.scatter(1, best, torch.isfinite(confidence.gather(1, best)))


def topk_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] highest-confidence positions of each row, never an ineligible (-inf) one.
    confidence [B, L], k [B] -> bool [B, L]. One sort, no loop over the batch."""
    order = confidence.argsort(dim=1, descending=True, stable=True)  # [B, L]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)


class AdaptivePolicy:
    """Shared defaults of the policies that decide from confidences alone (threshold, factor, cad,
    eb): no per-block state, every row with masks takes a forward, and a budget of ``max_steps()``
    steps per block (at least one commit per step makes ``block_length`` always enough)."""

    budget: int
    uses_progress = False  # the loop computes StepContext.progress only for policies that read it

    def start_block(self, eligible: torch.Tensor) -> None:
        pass

    def max_steps(self) -> int:
        return self.budget

    def rows_needing_forward(self, step: int) -> torch.Tensor | None:
        return None


def check_range(strategy: str, name: str, value: float, lo: float | None, hi: float | None,
                open_low: bool = False) -> None:
    """Raise ConfigError naming the strategy unless ``value`` is a finite number in the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{strategy}: {name} must be of type float, got {value!r}")
    bad = not math.isfinite(value) or (lo is not None and (value <= lo if open_low else value < lo))
    if bad or (hi is not None and value > hi):
        low = "(-inf" if lo is None else (f"({lo}" if open_low else f"[{lo}")
        high = f"{hi}]" if hi is not None else "inf)"
        raise ConfigError(f"{strategy}: {name} must be in {low}, {high}, got {value}")


def check_int(strategy: str, name: str, value: int, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{strategy}: {name} must be of type int, got {value!r}")
    if value < lo:
        raise ConfigError(f"{strategy}: {name} must be >= {lo}, got {value}")


def param(default, help: str, lo: float | None = None, hi: float | None = None, open_low: bool = False,
          choices: tuple[str, ...] = ()):
    """A strategy parameter: its default, help text and allowed range, declared once; validation
    (:func:`validate`) and ``fewstep list strategies`` both read this declaration."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "open_low": open_low,
                                            "choices": choices})


def validate(strategy: str, params) -> None:
    """Check every field of a parameter dataclass against its declaration (type, range, choices)."""
    for f in fields(params):
        value, m, kind = getattr(params, f.name), f.metadata, str(f.type)
        if kind == "int":
            check_int(strategy, f.name, value, int(m["lo"]) if m.get("lo") is not None else -(2**63))
            if m.get("hi") is not None and value > m["hi"]:
                raise ConfigError(f"{strategy}: {f.name} must be <= {m['hi']}, got {value}")
        elif kind == "float":
            check_range(strategy, f.name, value, m.get("lo"), m.get("hi"), m.get("open_low", False))
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{strategy}: {f.name} must be true or false, got {value!r}")
        elif kind == "str" and m.get("choices") and value not in m["choices"]:
            raise ConfigError(f"{strategy}: {f.name} must be one of {', '.join(m['choices'])}, got {value!r}")


def describe_params(params_cls) -> list[dict]:
    """[{name, type, default, range, help}] for ``fewstep list strategies``."""
    out = []
    for f in fields(params_cls):
        m = f.metadata
        if m.get("choices"):
            rng = " | ".join(m["choices"])
        else:
            lo, hi = m.get("lo"), m.get("hi")
            low = "(-inf" if lo is None else (f"({lo}" if m.get("open_low") else f"[{lo}")
            rng = f"{low}, {'inf)' if hi is None else f'{hi}]'}"
        out.append({"name": f.name, "type": str(f.type), "default": f.default, "range": rng, "help": m.get("help", "")})
    return out
