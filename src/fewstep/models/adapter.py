"""The model interface the decode loop talks to (design.md section 3).

``DiffusionModel`` wraps a masked diffusion LM: ``logits(input_ids | inputs_embeds, attention_mask)``
-> [B, T, V] where ``logits[:, i]`` predicts position i (models trained with shifted logits, like
Dream, are realigned here), the embedding table, the mask / EOS / pad ids and the tokenizer.
``CausalModel`` wraps an autoregressive LM (the drafters and the ``ar`` baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Base:
    module: torch.nn.Module
    tokenizer: Any
    name: str
    eos_id: int
    pad_id: int
    max_length: int
    stop_ids: tuple[int, ...] = ()
    decode_defaults: dict[str, Any] = field(default_factory=dict)
    kind: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of the prompt for a user message: the chat template where the tokenizer has
        one (ending with the assistant turn's opening), plain encoding otherwise."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            return list(ids)
        return list(tok.encode(text))

    def answer_length(self, ids: list[int]) -> int:
        """Generated tokens before the first EOS / stop token."""
        stops = set(self.stop_ids) | {self.eos_id}
        return next((i for i, t in enumerate(ids) if t in stops), len(ids))

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, cut at the first stop token."""
        return self.tokenizer.decode(ids[: self.answer_length(ids)], skip_special_tokens=True).strip()


@dataclass
class DiffusionModel(_Base):
    mask_id: int = -1
    shifted_logits: bool = False
    kind: str = "diffusion"

    def embedding_table(self) -> torch.Tensor:
        """The input embedding matrix [V, D] (for embedding-space priors)."""
        module: Any = self.module
        if hasattr(module, "get_input_embeddings"):
            return module.get_input_embeddings().weight
        return module.embed_tokens.weight

    @torch.no_grad()
    def logits(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T, V] logits; ``logits[:, i]`` predicts position i."""
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds).logits
        if self.shifted_logits:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out


@dataclass
class CausalModel(_Base):
    kind: str = "causal"
