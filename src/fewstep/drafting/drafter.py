"""Drafters: causal LMs that answer a prompt greedily before the diffusion model starts.

A drafter is any transformers causal-LM directory with its tokenizer (or the bundled ``tiny-ar``),
loaded once per process and device. Drafting is batched greedy decoding with the drafter's KV
cache (transformers' ``generate``) and a token budget; per row it returns the draft text, the
drafter's probability of each token it chose, its forward count (one per generated token up to and
including its EOS) and its share of the batch's wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.errors import ConfigError, ModelLoadError

_LOADED: dict[tuple[str, str, str], Any] = {}


@dataclass(frozen=True)
class Draft:
    token_ids: list[int]  # drafter tokens of the answer (before its EOS)
    token_probs: list[float]  # the drafter's probability of each of them
    ended: bool  # the drafter ended its answer with EOS (else it ran out of budget)
    eos_prob: float  # the drafter's probability of that EOS (0 when it did not end)
    nfe: int  # drafter forwards for this row
    seconds: float  # this row's share of the drafting wall time


def load_drafter(name_or_path: str, device: str | torch.device = "cpu", dtype: Any = None):
    """The drafter ``name_or_path`` as a :class:`~fewstep.models.adapter.CausalModel`, loaded once."""
    from fewstep.models.loading import load_model

    key = (str(name_or_path), str(device), str(dtype))
    if key not in _LOADED:
        try:
            model = load_model(name_or_path, device=device, dtype=dtype)
        except ModelLoadError as e:
            raise ModelLoadError(f"drafter {name_or_path!r}: {e}") from None
        if model.kind != "causal":
            raise ConfigError(f"drafter {name_or_path!r} is not a causal LM (it is a {model.kind} model)")
        _check_tokenizer(model, name_or_path)
        _LOADED[key] = model
    return _LOADED[key]


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


@torch.no_grad()
def draft(drafter, prompts: list[str], max_new_tokens: int) -> list[Draft]:
    """Greedy drafts of ``prompts`` (user messages) with at most ``max_new_tokens`` tokens each."""
    from fewstep.decoding.state import check_prompts, left_pad

    batch = [drafter.encode_prompt(p) for p in prompts]
    check_prompts(drafter, batch, max_new_tokens)
    ids, att, p = left_pad(batch, drafter.pad_id)
    stops = sorted({drafter.eos_id, *drafter.stop_ids})
    t0 = time.perf_counter()
    out = drafter.module.generate(
        input_ids=ids.to(drafter.device), attention_mask=att.to(drafter.device), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=stops, pad_token_id=drafter.pad_id, output_logits=True,
        return_dict_in_generate=True,
    )
    seconds = (time.perf_counter() - t0) / len(prompts)
    chosen = out.sequences[:, p:].cpu()  # [B, n]
    logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, n, V]
    probs = torch.softmax(logits, dim=-1).gather(-1, chosen[..., None]).squeeze(-1)  # [B, n]
    drafts = []
    for row, row_probs in zip(chosen.tolist(), probs.tolist()):
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        ended = n < len(row)
        drafts.append(Draft(row[:n], row_probs[:n], ended, row_probs[n] if ended else 0.0,
                            min(n + 1, len(row)), seconds))
    return drafts
