"""``ar``: greedy autoregressive decoding of a causal model (the drafter ``tiny-ar`` and any
transformers causal LM). It has no commit policy: the engine (:mod:`fewstep.engine`) runs it with
transformers' ``generate``, and ``gen_length`` is the most new tokens. It declares the kind of
model it decodes (``MODEL_KIND``); every other strategy decodes diffusion models."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_KIND = "causal"
SUMMARY = "greedy autoregressive decoding of a causal model (gen_length = most new tokens)"


@dataclass(frozen=True)
class Params:
    pass


policy = None
