"""The lm-evaluation-harness model ``fewstep``: any fewstep model and decoding strategy under lm-eval.

Importing this module registers the model (lm-eval does not discover it by itself)::

    import lm_eval
    import fewstep.integrations.lm_eval  # registers "fewstep"

    lm_eval.simple_evaluate(model="fewstep", model_args="pretrained=tiny-dlm,strategy=threshold,threshold=0.9",
                           tasks=["my_task"], task_manager=lm_eval.tasks.TaskManager(include_path="tasks/"))

From a shell, ``python -m fewstep.integrations.lm_eval ARGS`` is lm-eval's command line with the model
registered (``lm_eval ARGS`` alone does not know it). See docs/lm-eval.md.

``model_args``: ``pretrained`` (a bundled name or a model directory), ``strategy``, ``batch_size``,
``device``, ``dtype``, ``mc_num`` (Monte-Carlo samples per loglikelihood request, default 32) and any
:class:`~fewstep.config.DecodeConfig` field by name (``steps=12,gen_length=24``).

- ``generate_until``: requests are decoded in batches of ``batch_size`` with the configured strategy,
  and each output is cut at the first of its ``until`` strings. The canvas size is the decode config's
  ``gen_length``; the task's ``max_gen_toks``, ``temperature`` and ``do_sample`` are not used (set
  ``gen_length`` / ``temperature`` in ``model_args``). Contexts are encoded as given: pass lm-eval's
  ``apply_chat_template`` to wrap them in the model's chat template.
- ``loglikelihood`` (masked diffusion models): LLaDA's Monte-Carlo estimate (see
  :func:`mc_loglikelihood`); ``is_greedy`` is a one-step check (see :func:`greedy_in_one_step`).
- ``loglikelihood_rolling``: not implemented (raises NotImplementedError).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models stay listed once the registry is not empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fewstep.integrations.lm_eval needs lm-eval: pip install 'fewstep[lmeval]'") from e

from fewstep.config import override
from fewstep.errors import ConfigError, PromptTooLongError

NAME = "fewstep"
DEFAULT_BATCH_SIZE = 16
DEFAULT_MC_NUM = 32


# --- the Monte-Carlo loglikelihood of masked diffusion models ------------------------------------------


def chunk_sizes(total: int, size: int) -> list[int]:
    """``total`` split into chunks of at most ``size``: ``chunk_sizes(10, 4) == [4, 4, 2]``."""
    return [min(size, total - i) for i in range(0, total, size)]


def mask_continuation(
    seq: torch.Tensor, prefix_len: int, n: int, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` noisy copies of ``seq`` [T] with some continuation tokens masked (the prefix never is).

    Copy i masks exactly l_i of the L continuation tokens, at random positions; the l_i are spread
    evenly over 1..L from a random start (LLaDA's stratified draw of l ~ U{1..L}).
    -> noisy ids [n, T], masked positions [n, T] (bool), weights L / l_i [n].
    """
    length = seq.numel() - prefix_len
    start = int(torch.randint(1, length + 1, (), generator=generator))
    counts = torch.round(torch.linspace(float(start), start + (n - 1) * length / n, n)).long()
    counts = (counts - 1) % length + 1  # [n] in 1..L
    order = torch.rand(n, length, generator=generator).argsort(dim=1)  # a random permutation per copy
    in_target = order < counts[:, None]  # [n, L]: exactly counts[i] True per row
    masked = torch.cat([torch.zeros(n, prefix_len, dtype=torch.bool), in_target], dim=1)
    noisy = torch.where(masked, torch.full_like(seq, mask_id), seq.expand(n, -1))
    return noisy, masked, length / counts.double()


def fit_context(prefix: list[int], target: list[int], max_length: int) -> list[int]:
    """The prefix, cut from the left so that prefix + target fits the model's context."""
    if len(target) > max_length:
        raise PromptTooLongError(f"a continuation of {len(target)} tokens exceeds the model's context of "
                                 f"{max_length} tokens")
    room = max_length - len(target)
    return prefix[len(prefix) - room:] if len(prefix) > room else prefix


@torch.no_grad()
def mc_loglikelihood(model, prefix: list[int], target: list[int], mc_num: int = DEFAULT_MC_NUM,
                     batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> float:
    """LLaDA's Monte-Carlo estimate of log p(target | prefix) for a masked diffusion model.

    Each of ``mc_num`` samples masks l ~ U{1..L} of the L target tokens (prefix unmasked), and
    scores the cross-entropy of the masked tokens, weighted by L / l; the estimate is minus their
    mean. In expectation it is a lower bound of the log-likelihood (the model's ELBO), as in LLaDA's
    evaluation. Samples run ``batch_size`` at a time; ``seed`` makes the estimate reproducible.
    """
    if not target:
        return 0.0
    prefix = fit_context(prefix, target, model.max_length)
    seq = torch.tensor(prefix + target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for n in chunk_sizes(mc_num, batch_size):
        noisy, masked, weight = mask_continuation(seq, len(prefix), n, model.mask_id, generator)
        logits = model.logits(input_ids=noisy.to(model.device)).float().cpu()  # [n, T, V]
        ce = F.cross_entropy(logits[masked], seq.expand(n, -1)[masked], reduction="none").double()
        rows = torch.arange(n)[:, None].expand(n, seq.numel())[masked]
        per_sample = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, ce)
        total += float((per_sample * weight).sum())
    return -total / mc_num


@torch.no_grad()
def greedy_in_one_step(model, prefix: list[int], target: list[int]) -> bool:
    """Whether one forward over the prefix and an all-masked continuation predicts every target token
    as its argmax. LLaDA's check unmasks one token per step instead (L forwards); this one costs a
    single forward, and the two can disagree either way."""
    if not target:
        return True
    prefix = fit_context(prefix, target, model.max_length)
    ids = torch.tensor([prefix + [model.mask_id] * len(target)], dtype=torch.long, device=model.device)
    guess = model.logits(input_ids=ids)[0, len(prefix):].argmax(-1).cpu()
    return bool((guess == torch.tensor(target)).all())


# --- the lm-eval model ---------------------------------------------------------------------------------


def _batch_size(value: Any) -> int:
    """lm-eval's batch size (an int, a numeric string, or ``auto``: the default) as a positive int."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {size}")
    return size


def _device(device: str | None) -> str:
    """The torch device to load on: CPU by default, and CPU (with a warning) for a CUDA device on a
    machine without CUDA, since lm-eval's command line asks for ``cuda:0`` unless told otherwise."""
    if not device:
        return "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("fewstep: %s asked for but CUDA is not available; using the CPU", device)
        return "cpu"
    return str(device)


def _decode_settings(extra: dict[str, Any]) -> dict[str, Any]:
    """The model_args that are decode settings, as strings (parsed by the setting's type). Keys
    that are not settings of the strategy are refused by :func:`fewstep.config.override`."""
    return {k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in extra.items()}


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of the ``until`` strings."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


def _until(gen_kwargs: Any) -> list[str]:
    """The stop strings of a generate_until request (``until``: a string or a list)."""
    until = gen_kwargs.get("until", []) if isinstance(gen_kwargs, dict) else []
    return [until] if isinstance(until, str) else list(until or [])


def _register_once(cls: type) -> type:
    """``register_model(NAME)``, skipped when the name is taken already (this module run with ``-m``
    and imported as well)."""
    if model_registry.get(NAME, None) is None:
        register_model(NAME)(cls)
    return cls


@_register_once
class FewstepLM(LM):
    """lm-eval's ``fewstep`` model: a fewstep model decoded with a fewstep strategy."""

    def __init__(self, pretrained: str = "tiny-dlm", strategy: str | None = None, batch_size: Any = None,
                 device: str | None = None, dtype: str | None = None, mc_num: int = DEFAULT_MC_NUM,
                 max_batch_size: Any = None, **decode: Any) -> None:
        from fewstep.config import resolve_config
        from fewstep.models.loading import load_model

        super().__init__()
        self.model = load_model(str(pretrained), device=_device(device), dtype=None if dtype == "auto" else dtype)
        if self.model.kind not in ("diffusion", "causal"):
            raise ConfigError(f"{pretrained!r} cannot be evaluated with lm-eval: it does not decode prompts")
        try:
            self.cfg = override(resolve_config(self.model, strategy, ()), _decode_settings(decode))
        except ConfigError as e:
            raise ConfigError(f"unknown fewstep model_args or bad value: {e} (model_args also take pretrained, "
                              "strategy, batch_size, device, dtype, mc_num)") from None
        self.batch_size = _batch_size(batch_size)
        if int(mc_num) < 1:
            raise ConfigError(f"mc_num must be >= 1, got {mc_num}")
        self.mc_num = int(mc_num)
        self._device = self.model.device

    # --- text <-> tokens ---

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as given; the tokenizer's BOS is not added twice to a templated text."""
        tok = self.model.tokenizer
        bos = getattr(tok, "bos_token", None)
        return list(tok.encode(text, add_special_tokens=not (bos and text.startswith(bos))))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, the continuation taken off the encoding of the whole text
        (trailing spaces of the context move to the continuation, as lm-eval's models do)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        n = len(self.encode(context)) if context else 0
        return whole[:n], whole[n:]

    # --- lm-eval's interface ---

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request's context with the configured strategy; cut at its ``until`` strings."""
        from tqdm import tqdm

        from fewstep.decoding.generate import generate

        prompts = [self.encode(req.args[0]) for req in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
        outputs = [""] * len(requests)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for chunk in tqdm(batches, disable=disable_tqdm or self.rank != 0, desc="fewstep generate_until"):
            for i, result in zip(chunk, generate(self.model, [prompts[i] for i in chunk], self.cfg)):
                outputs[i] = cut_at(result.text, _until(requests[i].args[1]))
                self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
        return outputs

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(Monte-Carlo estimate of log p(continuation | context), one-step greedy check) per request."""
        from tqdm import tqdm

        if self.model.kind != "diffusion":
            raise ConfigError("the fewstep lm-eval model computes loglikelihood for masked diffusion models only; "
                              "evaluate causal models with lm-eval's own 'hf' model")
        results = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="fewstep loglikelihood"):
            prefix, target = self.encode_pair(*req.args)
            result = (mc_loglikelihood(self.model, prefix, target, self.mc_num, self.batch_size, self.cfg.seed),
                      greedy_in_one_step(self.model, prefix, target))
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "fewstep: loglikelihood_rolling (perplexity tasks) is not implemented; a masked diffusion model has no "
            "left-to-right factorisation to roll over. Use generate_until or loglikelihood tasks."
        )

    # --- chat templates (lm-eval's apply_chat_template option) ---

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.model.tokenizer, "name_or_path", self.model.name)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.model.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation rendered with the model's chat template, as text."""
        return self.model.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the ``fewstep`` model registered (``argv``: its arguments)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
