"""Append-only text deltas of a streamed answer.

OpenAI clients concatenate the deltas, so a delta can never be taken back. A diffusion canvas
fills in anywhere, so a stream sends only its *settled prefix*: the longest prefix of committed
positions, less its last token (a token's text can still merge with the next one) and less a
trailing partial character or a suffix that may be the start of a stop string. That prefix is
final only when committed tokens are never revoked (:func:`fewstep.serve.requests.committed_is_final`);
otherwise (warm starts, bounded revision) the text is sent once, when the row is done. The last
delta completes the answer, so the deltas always add up to the non-streamed text.
"""

from __future__ import annotations


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def hold_back(text: str, stops: list[str]) -> str:
    """``text`` less a trailing replacement character (a partial UTF-8 sequence) and less its
    longest suffix that is a proper prefix of a stop string (it may still become one)."""
    text = text.rstrip("\ufffd")
    keep = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = min(keep, len(text) - n)
                break
    return text[:keep]


class TextStream:
    """The text sent so far of one streamed answer; ``update`` and ``finish`` return the next delta."""

    def __init__(self, model, stops: list[str], final_only: bool):
        self.model, self.stops, self.final_only = model, stops, final_only
        self.sent = ""
        self.stopped = False  # a stop string has ended the answer

    def _delta(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def update(self, settled: list[int]) -> str:
        """The delta for a row whose first ``len(settled)`` tokens are committed."""
        if self.final_only or self.stopped or not settled:
            return ""
        model = self.model
        ended = model.answer_length(settled) < len(settled)  # a stop token is settled: the text is complete
        text = model.decode(settled if ended else settled[:-1])
        text, self.stopped = cut_at_stop(text, self.stops)
        if not self.stopped and not ended:
            text = hold_back(text, self.stops)
        return self._delta(text)

    def finish(self, final_text: str) -> str:
        """The last delta: the rest of the answer (``final_text`` with the stop strings applied)."""
        text, hit = cut_at_stop(final_text, self.stops)
        self.stopped |= hit
        if not text.startswith(self.sent):  # cannot happen when committed tokens are final; never resend
            raise RuntimeError(f"streamed text {self.sent!r} is not a prefix of the answer {text!r}")
        return self._delta(text)
