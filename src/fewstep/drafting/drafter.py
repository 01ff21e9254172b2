"""Drafters: causal LMs that answer a prompt greedily before the diffusion model starts.

A drafter is any transformers causal-LM directory with its tokenizer (or the bundled ``tiny-ar``),
loaded once per process and device; the seconds of that load (transformers' import included where
it was the first to need it) are kept apart (:func:`load_seconds`) from the per-problem drafting
time. Drafting is batched greedy decoding with a key/value cache and a token budget: the lean
loop of :mod:`fewstep.drafting.lean` for Llama-family drafters (``tiny-ar``, Qwen2, Qwen3), else
transformers' ``generate``; per row it returns the draft tokens, the drafter's probability of each
token it chose, its forward count (one per generated token up to and including its EOS) and its
share of the batch's wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.errors import ConfigError, ModelLoadError

_LOADED: dict[tuple[str, ...], Any] = {}
_LOAD_S: dict[tuple[str, ...], float] = {}  # one-time seconds of each load


def _key(name_or_path: str, device: Any, dtype: Any, quantize: str | None) -> tuple[str, ...]:
    """A load's key: name, device and dtype, and the quantization where there is one."""
    return (str(name_or_path), str(device), str(dtype)) + ((quantize,) if quantize else ())


@dataclass(frozen=True)
class Draft:
    token_ids: list[int]  # drafter tokens of the answer (before its EOS)
    token_probs: list[float]  # the drafter's probability of each of them
    ended: bool  # the drafter ended its answer with EOS (else it ran out of budget)
    eos_prob: float  # the drafter's probability of that EOS (0 when it did not end)
    nfe: int  # drafter forwards for this row
    seconds: float  # this row's share of the drafting wall time


def load_drafter(name_or_path: str, device: str | torch.device = "cpu", dtype: Any = None,
                 quantize: str | None = None):
    """The drafter ``name_or_path`` as a :class:`~fewstep.models.adapter.CausalModel`, loaded once
    (the seconds that took: :func:`load_seconds`). ``quantize``: the diffusion model's weight
    quantization (:func:`fewstep.models.quantize.quantization_of`), applied to the drafter too."""
    key = _key(name_or_path, device, dtype, quantize)
    if key not in _LOADED:
        t0 = time.perf_counter()
        _LOADED[key] = _load(name_or_path, device, dtype, quantize)
        _LOAD_S[key] = time.perf_counter() - t0
    return _LOADED[key]


def drafter_dtype(cfg) -> str | None:
    """The dtype a decode configuration asks the drafter in (None: as its directory stores it)."""
    return None if cfg.drafter_dtype == "auto" else str(cfg.drafter_dtype)


def load_seconds(name_or_path: str, device: str | torch.device = "cpu", dtype: Any = None,
                 quantize: str | None = None) -> float:
    """One-time seconds of loading the drafter (loading it now if it is not yet): reading it,
    checking its tokenizer and importing transformers where that load was the first to need it.
    Never part of a problem's ``drafter_s``."""
    load_drafter(name_or_path, device, dtype, quantize)
    return _LOAD_S[_key(name_or_path, device, dtype, quantize)]


def _load(name_or_path: str, device: str | torch.device, dtype: Any, quantize: str | None = None):
    import transformers  # noqa: F401  (its import is part of the drafter's one-time cost)

    from fewstep.models.loading import load_model

    try:
        model = load_model(name_or_path, device=device, dtype=dtype, quantize=quantize)
    except ModelLoadError as e:
        raise ModelLoadError(f"drafter {name_or_path!r}: {e}") from None
    if model.kind != "causal":
        raise ConfigError(f"drafter {name_or_path!r} is not a causal LM (it is a {model.kind} model)")
    _check_tokenizer(model, name_or_path)
    return model


def _check_tokenizer(model, name: str) -> None:
    tok = model.tokenizer
    try:
        ids = tok.encode("1 + 2 = 3", add_special_tokens=False)
        text = tok.decode(ids, skip_special_tokens=True)
    except Exception as e:  # tokenizers raise many types
        raise ConfigError(f"drafter {name!r}: its tokenizer cannot encode and decode text ({e})") from None
    if not isinstance(text, str) or not ids:
        raise ConfigError(f"drafter {name!r}: its tokenizer cannot decode what it encodes")


def default_budget(drafter, gen_length: int) -> int:
    """The drafter's token budget when none is set: its own ``gen_length`` default, else ``gen_length``."""
    return int(drafter.decode_defaults.get("gen_length", gen_length))


METHODS = ("auto", "lean", "generate")


def draft(drafter, prompts: list[str], max_new_tokens: int, method: str = "auto") -> list[Draft]:
    """Greedy drafts of ``prompts`` (user messages) with at most ``max_new_tokens`` tokens each.

    ``method``: ``auto`` decodes with :func:`fewstep.drafting.lean.greedy` where the drafter's
    architecture supports it (:func:`fewstep.drafting.lean.supports`) and with transformers'
    ``generate()`` otherwise; ``lean`` / ``generate`` force one (``lean`` on an unsupported
    architecture is an error). Both give the same drafts. ``seconds``: the decode's wall time,
    results on the host, split evenly over the rows."""
    from fewstep.decoding.state import check_prompts, left_pad
    from fewstep.drafting import lean

    if method not in METHODS:
        raise ConfigError(f"drafting method must be one of {', '.join(METHODS)}, got {method!r}")
    supported = lean.supports(drafter.module)
    if method == "lean" and not supported:
        raise ConfigError(f"drafter {drafter.name!r}: the lean loop does not support its architecture")
    batch = [drafter.encode_prompt(p) for p in prompts]
    check_prompts(drafter, batch, max_new_tokens)
    ids, att, _ = left_pad(batch, drafter.pad_id)
    stops = sorted({drafter.eos_id, *drafter.stop_ids})
    t0 = time.perf_counter()
    if supported and method != "generate":
        out = lean.greedy(drafter.module, ids, att, max_new_tokens, stops, drafter.pad_id)
        chosen, probs = out.tokens.cpu(), out.probs.cpu()  # [B, n] each
    else:
        chosen, probs = _generate(drafter, ids, att, max_new_tokens, stops)
    seconds = (time.perf_counter() - t0) / len(prompts)
    return _drafts(chosen.tolist(), probs.tolist(), set(stops), seconds)


@torch.no_grad()
def _generate(drafter, ids: torch.Tensor, att: torch.Tensor, max_new_tokens: int,
              stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' greedy ``generate()``: chosen tokens [B, n] and their probabilities [B, n], on the host."""
    out = drafter.module.generate(
        input_ids=ids.to(drafter.device), attention_mask=att.to(drafter.device), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=stops, pad_token_id=drafter.pad_id, output_logits=True,
        return_dict_in_generate=True,
    )
    chosen = out.sequences[:, ids.shape[1]:].cpu()  # [B, n]
    logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, n, V]
    return chosen, torch.softmax(logits, dim=-1).gather(-1, chosen[..., None]).squeeze(-1)


def _drafts(chosen: list[list[int]], probs: list[list[float]], stops: set[int], seconds: float) -> list[Draft]:
    """One :class:`Draft` per row of chosen tokens (a row stops at its first stop token)."""
    drafts = []
    for row, row_probs in zip(chosen, probs):
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        ended = n < len(row)
        drafts.append(Draft(row[:n], row_probs[:n], ended, row_probs[n] if ended else 0.0,
                            min(n + 1, len(row)), seconds))
    return drafts
