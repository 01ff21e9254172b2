"""Bridging a draft to the diffusion canvas: drafter tokens -> text -> diffusion tokens -> positions.

The rules (``to_canvas``):

1. Text: the drafter's answer tokens (before its EOS) decoded by the drafter's tokenizer, special
   tokens skipped, surrounding whitespace stripped: the same text a user would read.
2. Tokens: the diffusion tokenizer encodes that text without special tokens; diffusion token j
   goes to generation position j. Characters the diffusion tokenizer does not know become its
   unknown token: those positions are left masked (no prior there), never injected as ``<unk>``.
3. Length: a draft longer than the canvas is cut at the canvas. A shorter draft that the drafter
   ended with EOS says "the answer ends here": the positions after it get the diffusion model's
   EOS (its padding after an answer), with the drafter's EOS probability. A draft that ran out of
   budget leaves the positions after it masked.
4. Probability of a diffusion token: the product of the drafter's probabilities of every drafter
   token whose characters overlap the diffusion token's characters (the drafter's joint probability
   of having written them). Tokenizers without character offsets give each diffusion token the
   draft's lowest token probability (a conservative bound).

Different tokenizers split the same text differently (tiny-ar writes ``1``, ``2``; tiny-dlm reads
``12``): rule 4 is what carries the drafter's confidence across the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fewstep.drafting.drafter import Draft


@dataclass(frozen=True)
class Bridged:
    tokens: list[int]  # [G] a diffusion token id per generation position, -1 where none
    probs: list[float]  # [G] the drafter's probability of it (0 where none)
    text: str  # the draft's text


def draft_text(draft: Draft, drafter_tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The draft's text and each drafter token's character span in it."""
    spans, prev = [], ""
    for k in range(1, len(draft.token_ids) + 1):  # incremental decoding: exact spans for any tokenizer
        cur = drafter_tokenizer.decode(draft.token_ids[:k], skip_special_tokens=True)
        start = len(prev) if cur.startswith(prev) else min(len(prev), len(cur))
        spans.append((start, len(cur)))
        prev = cur
    lead = len(prev) - len(prev.lstrip())
    text = prev.strip()
    return text, [(max(a - lead, 0), max(b - lead, 0)) for a, b in spans]


def to_canvas(draft: Draft, drafter_tokenizer, diffusion_tokenizer, gen_length: int, eos_id: int) -> Bridged:
    """A draft as a canvas prior over ``gen_length`` generation positions (rules in the module doc)."""
    text, spans = draft_text(draft, drafter_tokenizer)
    enc = diffusion_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) \
        if getattr(diffusion_tokenizer, "is_fast", False) else None
    if enc is not None:
        ids = list(enc["input_ids"])
    else:
        ids = list(diffusion_tokenizer.encode(text, add_special_tokens=False))
    offsets = list(enc["offset_mapping"]) if enc is not None else None
    unk = getattr(diffusion_tokenizer, "unk_token_id", None)
    floor = min(draft.token_probs, default=0.0)
    tokens, probs = [], []
    for j, t in enumerate(ids[:gen_length]):
        if t == unk:
            tokens.append(-1)
            probs.append(0.0)
            continue
        if offsets is None:
            p = floor
        else:
            a, b = offsets[j]
            p = math.prod(q for (s, e), q in zip(spans, draft.token_probs) if s < b and a < e)
        tokens.append(int(t))
        probs.append(float(p))
    fill = gen_length - len(tokens)
    if fill > 0:
        tokens += [eos_id if draft.ended else -1] * fill
        probs += [draft.eos_prob if draft.ended else 0.0] * fill
    return Bridged(tokens, probs, text)
