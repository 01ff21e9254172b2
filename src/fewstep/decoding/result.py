"""The result of decoding one prompt (``fewstep.generate`` returns one per prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]  # the generation region (gen_length ids for diffusion models)
    text: str  # decoded answer, cut at the first EOS / stop token
    nfe: int  # forward passes of the model for this prompt
    answer_tokens: int  # generated tokens up to (not including) the first EOS
    committed_at: list[int] = field(default_factory=list)  # step of each position's commit
    drafter_nfe: int = 0  # forward passes of the drafter (warm starts; 0 without one)
    drafter_s: float = 0.0  # this prompt's share of the drafter's wall time
    injected: int = 0  # draft tokens the canvas started with (provisional)
    confirmed: int = 0  # of those, kept by the diffusion model
    revoked: int = 0  # positions sent back to mask (provisional or committed), edited ones included
    edited: int = 0  # of the revoked draft tokens, those that took the step's candidate at once (reject=edit)

    @property
    def tokens_per_forward(self) -> float:
        return self.answer_tokens / self.nfe if self.nfe else 0.0
