"""The model interface the decode loop talks to.

``DiffusionModel`` wraps a masked diffusion LM: ``logits(input_ids | inputs_embeds, attention_mask)``
-> [B, T, V] where ``logits[:, i]`` predicts position i (models trained with shifted logits, like
Dream, are realigned here), the embedding table, the mask / EOS / pad ids and the tokenizer.
``CausalModel`` wraps an autoregressive LM (the drafters and the ``ar`` baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.errors import ConfigError
from fewstep.models.kvcache import KVCache


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
        """The device of the input embeddings (asked once per decode; walking every parameter to
        find the first one costs more than a greedy step of the lab model)."""
        module: Any = self.module
        weight = getattr(getattr(module, "embed_tokens", None), "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.device
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

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, T, D] of token ids [B, T] (the model's own embedding table)."""
        return torch.nn.functional.embedding(ids, self.embedding_table())

    @property
    def supports_cache(self) -> bool:
        return bool(getattr(self.module, "supports_cache", False))

    def logits(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        positions: slice | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_rows: torch.Tensor | None = None,
        window: slice | None = None,
    ) -> torch.Tensor:
        """Logits [B, n, V] of the positions ``positions`` (a slice of the sequence; None: all T);
        row ``j`` predicts position ``positions.start + j``.

        Models that declare ``supports_logits_positions`` (fewstep's own) compute the output head
        for those positions only; any other module is run whole and its logits sliced. For models
        trained with shifted logits (Dream) position i is read from the output at i - 1.
        ``position_ids`` [B, T] overrides the positions the model derives from the attention mask.

        ``cache`` (:class:`~fewstep.models.kvcache.KVCache`, models that declare
        ``supports_cache``): a forward without ``window`` stores every position's keys and values
        at the cache rows ``cache_rows``; with ``window`` (a slice of the sequence holding
        ``positions``) only the window's positions are run and the rest is read from the cache.
        The inputs are always the whole sequence [B, T]; the window is cut here."""
        if cache is not None and not self.supports_cache:
            raise ConfigError(f"{self.name} does not support a key/value cache (use cache=none)")
        if window is not None and (cache is None or positions is None):
            raise ValueError("a window forward needs a cache and the positions to return")
        if torch.is_grad_enabled():  # callers that decode many steps disable autograd once, around the loop
            with torch.no_grad():
                return self.logits(input_ids, attention_mask, inputs_embeds, positions, position_ids,
                                   cache, cache_rows, window)
        module: Any = self.module
        shift = 1 if self.shifted_logits else 0
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                                  "inputs_embeds": inputs_embeds}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs.update(cache=cache, cache_rows=cache_rows)
        if window is not None:
            assert positions is not None
            first = positions.start - shift  # the first output row read
            if first < 0:
                raise ValueError("a shifted model cannot read position 0 through a window")
            window = slice(min(window.start, first), window.stop)
            kwargs.update(window=window, input_ids=None if input_ids is None else input_ids[:, window],
                          inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, window])
            rel = slice(first - window.start, positions.stop - shift - window.start)
            return module(**kwargs, logits_positions=rel).logits
        if positions is not None and getattr(module, "supports_logits_positions", False):
            start = positions.start - shift
            if start < 0:  # a shifted model reads position 0 from itself (no position -1)
                out = self.logits(input_ids, attention_mask, inputs_embeds, None, position_ids, cache, cache_rows)
                return out[:, positions]
            return module(**kwargs, logits_positions=slice(start, positions.stop - shift)).logits
        out = module(**kwargs).logits
        if shift:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out if positions is None else out[:, positions]


@dataclass
class CausalModel(_Base):
    kind: str = "causal"
