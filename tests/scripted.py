"""A scripted diffusion model with hand-made logits, for tests of the loop that need no trained
weights: it predicts token 10 + i at generation position i < answer_len and EOS after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.decoding.loop import decode
from fewstep.models.adapter import DiffusionModel

MASK, EOS, PAD, V = 1, 2, 0, 32


@dataclass
class Out:
    logits: torch.Tensor


class Scripted(torch.nn.Module):
    """Predicts token 10 + i at generation position i < answer_len and EOS after it, with the
    given probability; the generation region is the last ``gen_length`` positions."""

    def __init__(self, gen_length: int, answer_len: int, p: float = 0.9):
        super().__init__()
        self.gen_length, self.answer_len, self.p = gen_length, answer_len, p
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        b, t = input_ids.shape
        target = torch.full((t,), EOS)
        start = t - self.gen_length
        target[start:start + self.answer_len] = 10 + torch.arange(self.answer_len)
        probs = torch.full((b, t, V), (1 - self.p) / (V - 1))
        probs.scatter_(2, target.expand(b, t)[..., None], self.p)
        return Out(probs.log())


def scripted_model(gen_length=16, answer_len=5, p=0.9):
    return DiffusionModel(module=Scripted(gen_length, answer_len, p), tokenizer=None, name="scripted", eos_id=EOS,
                          pad_id=PAD, max_length=128, mask_id=MASK)


def final(model, prompts, cfg):
    events = list(decode(model, prompts, cfg))
    assert events[-1].done and sum(e.done for e in events) == 1
    return events


class EmbeddingRecorder(torch.nn.Module):
    """Wraps a scripted module: has an embedding table, records every forward's input embeddings
    (``seen``) and answers as the scripted module does."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.embed_tokens = torch.nn.Embedding(V, 4)
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        self.seen.append(inputs_embeds.clone())
        b, t, _ = inputs_embeds.shape
        return self.inner(input_ids=torch.full((b, t), 3), attention_mask=attention_mask)


def recording_model(gen_length=4, answer_len=2, p=0.9):
    """A scripted model whose module is an :class:`EmbeddingRecorder`."""
    model = scripted_model(gen_length, answer_len, p)
    model.module = EmbeddingRecorder(model.module)
    return model
