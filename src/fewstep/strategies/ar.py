"""``ar``: greedy autoregressive decoding of a causal model (the drafter ``tiny-ar`` and any
transformers causal LM). It has no commit policy: :func:`fewstep.decoding.generate.generate_ar`
runs it, and ``gen_length`` is the most new tokens."""

from __future__ import annotations

from dataclasses import dataclass

SUMMARY = "greedy autoregressive decoding of a causal model (gen_length = most new tokens)"


@dataclass(frozen=True)
class Params:
    pass


policy = None
