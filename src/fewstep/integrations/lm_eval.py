"""The lm-evaluation-harness model ``fewstep``: any fewstep model and decoding strategy under lm-eval.

lm-eval (0.4.13) finds models only in its own registry, filled by its own package and by modules that
call ``register_model`` when imported; it reads no entry points of other packages. So the model is
registered by importing this module, and the shell commands are::

    fewstep lm-eval --model fewstep --model_args pretrained=tiny-dlm,strategy=threshold,threshold=0.9 ...
    python -m fewstep.integrations.lm_eval --model fewstep ...     # the same

both lm-eval's own command line, every argument passed through, with the model registered. From
Python: ``import fewstep.integrations.lm_eval`` before ``lm_eval.simple_evaluate(model="fewstep", ...)``.

``model_args``: ``pretrained`` (a bundled name or a model directory), ``strategy``, ``batch_size``,
``device``, ``dtype``, ``mc_num`` (Monte-Carlo samples per loglikelihood request, default 32),
``mc_padding`` (``eos`` or ``none``, see :func:`~fewstep.decoding.likelihood.scored_region`) and any
:class:`~fewstep.config.DecodeConfig` field by name (``steps=12,gen_length=24``).

- ``generate_until``: requests are decoded in batches of ``batch_size`` with the configured strategy,
  and each output is cut at the first of its ``until`` strings. The canvas size is the decode config's
  ``gen_length``; the task's ``max_gen_toks``, ``temperature`` and ``do_sample`` are not used (set
  ``gen_length`` / ``temperature`` in ``model_args``).
- ``loglikelihood`` (masked diffusion models): a Monte-Carlo estimate of the masked-diffusion
  likelihood bound (see :func:`fewstep.decoding.likelihood.mc_loglikelihood`); ``is_greedy`` is a
  one-step check (see :func:`fewstep.decoding.likelihood.greedy_in_one_step`). Context and
  continuation are split on a token boundary (see :meth:`FewstepLM.encode_pair`).
- ``loglikelihood_rolling``: not implemented (raises NotImplementedError).
- Chat templates (``--apply_chat_template``): the model's own; a model without one is an error. A
  template that renders only the last user message (the lab models') gets the system instruction and
  few-shot turns folded into that message, so nothing is dropped (see :func:`fold_messages`).
- ``get_model_info``: the decode configuration, forward passes per request, and a SHA-256 of the model
  directory, in lm-eval's results under ``config``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models stay listed once the registry is not empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fewstep.integrations.lm_eval needs lm-eval: pip install 'fewstep[lmeval]'") from e

from fewstep.decoding.likelihood import DEFAULT_MC_NUM, greedy_in_one_step, mc_loglikelihood, scored_region
from fewstep.errors import ConfigError

NAME = "fewstep"
DEFAULT_BATCH_SIZE = 16
MC_PADDING = ("eos", "none")
log = logging.getLogger(__name__)


# --- chat templates ------------------------------------------------------------------------------------


def fold_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as one user message (and a trailing assistant prefill, if any): the system
    instruction, then each earlier turn (question and answer joined by a space), then the last user
    message, separated by blank lines. For templates that render the last user message only."""
    prefill = [messages[-1]] if messages and messages[-1]["role"] == "assistant" else []
    body = messages[: len(messages) - len(prefill)]
    parts: list[str] = []
    for m in body:
        if m["role"] == "assistant" and parts:
            parts[-1] = f"{parts[-1]} {m['content']}"
        else:
            parts.append(m["content"])
    return [{"role": "user", "content": "\n\n".join(parts)}, *prefill]


def renders_everything(rendered: str, messages: list[dict[str, str]]) -> bool:
    """Whether every message's content appears in the rendered prompt."""
    return all(m["content"] in rendered for m in messages)


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


def _flag_value(name: str, value: Any) -> bool:
    """A boolean model_arg (lm-eval passes ``True`` or the string given in --model_args)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


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
                 mc_padding: str = "eos", max_batch_size: Any = None, trust_remote_code: Any = False,
                 **decode: Any) -> None:
        from fewstep.config import resolve_config
        from fewstep.models.loading import load_model

        super().__init__()
        self.model = load_model(str(pretrained), device=_device(device), dtype=None if dtype == "auto" else dtype,
                                trust_remote_code=_flag_value("trust_remote_code", trust_remote_code))
        if self.model.kind not in ("diffusion", "causal"):
            raise ConfigError(f"{pretrained!r} cannot be evaluated with lm-eval: it does not decode prompts")
        self.pretrained = str(pretrained)
        try:
            self.cfg = resolve_config(self.model, strategy, (), request=_decode_settings(decode))
        except ConfigError as e:
            raise ConfigError(f"unknown fewstep model_args or bad value: {e} (model_args also take pretrained, "
                              "strategy, batch_size, device, dtype, mc_num, mc_padding, trust_remote_code)") from None
        self.batch_size = _batch_size(batch_size)
        if int(mc_num) < 1:
            raise ConfigError(f"mc_num must be >= 1, got {mc_num}")
        if mc_padding not in MC_PADDING:
            raise ConfigError(f"mc_padding must be one of {', '.join(MC_PADDING)}, got {mc_padding!r}")
        self.mc_num = int(mc_num)
        self.mc_padding = mc_padding
        self._device = self.model.device
        self._templated = False  # apply_chat_template was used for the contexts
        self._warned_plain = False
        self._cost: dict[str, dict[str, int]] = {}  # request type -> requests, forwards

    # --- text <-> tokens ---

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as given; the tokenizer's BOS is not added twice to a templated text."""
        tok = self.model.tokenizer
        bos = getattr(tok, "bos_token", None)
        return list(tok.encode(text, add_special_tokens=not (bos and text.startswith(bos))))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split on a token boundary.

        Trailing spaces of the context move to the continuation (as lm-eval's models do). The whole
        text is tokenised at once; when its tokens start with the context's own tokens, the rest is
        the continuation. Otherwise the joint tokenisation has no token boundary where the context
        ends (a chat template's ``A:`` followed by ``5`` reads as one unknown word ``A:5``): the model
        then answers from the end of the context, so the continuation is tokenised on its own.
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self.encode(context) if context else []
        whole = self.encode(context + continuation)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx):]
        return ctx, list(self.model.tokenizer.encode(continuation, add_special_tokens=False))

    def _count(self, kind: str, requests: int, forwards: int) -> None:
        cost = self._cost.setdefault(kind, {"requests": 0, "forwards": 0})
        cost["requests"] += requests
        cost["forwards"] += forwards

    def _check_plain_contexts(self) -> None:
        """Warn once when a chat model gets contexts that were not put in its chat template."""
        if not self._templated and not self._warned_plain and getattr(self.model.tokenizer, "chat_template", None):
            self._warned_plain = True
            log.warning("fewstep: %s has a chat template but the contexts are plain text; a chat-trained model "
                        "usually needs --apply_chat_template", self.pretrained)

    # --- lm-eval's interface ---

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request's context with the configured strategy; cut at its ``until`` strings."""
        from tqdm import tqdm

        from fewstep.engine import generate

        self._check_plain_contexts()
        prompts = [self.encode(req.args[0]) for req in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
        outputs = [""] * len(requests)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for chunk in tqdm(batches, disable=disable_tqdm or self.rank != 0, desc="fewstep generate_until"):
            results = generate(self.model, [prompts[i] for i in chunk], self.cfg)
            self._count("generate_until", len(chunk), sum(r.nfe for r in results))
            for i, result in zip(chunk, results):
                outputs[i] = cut_at(result.text, _until(requests[i].args[1]))
                self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
        return outputs

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(Monte-Carlo estimate of log p(continuation | context), one-step greedy check) per request."""
        from tqdm import tqdm

        if self.model.kind != "diffusion":
            raise ConfigError("the fewstep lm-eval model computes loglikelihood for masked diffusion models only; "
                              "evaluate causal models with lm-eval's own 'hf' model")
        self._check_plain_contexts()
        results = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="fewstep loglikelihood"):
            result = self.score(*req.args)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            results.append(result)
        return results

    def score(self, context: str, continuation: str) -> tuple[float, bool]:
        """One loglikelihood request: (estimate, greedy check) over the scored region of the continuation."""
        prefix, target = self.encode_pair(context, continuation)
        if not target:
            return 0.0, True
        region = scored_region(target, self.model.eos_id, self.cfg.gen_length, self.mc_padding)
        self._count("loglikelihood", 1, self.mc_num + 1)
        return (mc_loglikelihood(self.model, prefix, region, self.mc_num, self.batch_size, self.cfg.seed),
                greedy_in_one_step(self.model, prefix, region))

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "fewstep: loglikelihood_rolling (perplexity tasks) is not implemented; a masked diffusion model has no "
            "left-to-right factorisation to roll over. Use generate_until or loglikelihood tasks."
        )

    # --- chat templates (lm-eval's apply_chat_template option) ---

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.model.tokenizer, "name_or_path", self.model.name)).replace("/", "__")

    def _template(self) -> str:
        template = getattr(self.model.tokenizer, "chat_template", None)
        if not template:
            raise ConfigError(f"{self.pretrained} has no chat template, so --apply_chat_template cannot be used; "
                              "run without it (contexts are then given to the model as plain text)")
        return template

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The model's chat template; an error when one is asked for and the model has none."""
        return self._template() if chat_template else getattr(self.model.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation rendered with the model's chat template, as text, with nothing dropped: when
        the template leaves out a message (the system instruction or few-shot turns), the conversation is
        folded into one user message (:func:`fold_messages`); when even that loses text, an error."""
        self._template()
        self._templated = True
        history = [{"role": m["role"], "content": m["content"]} for m in chat_history]
        rendered = self._render(history, add_generation_prompt)
        if rendered is not None and renders_everything(rendered, history):
            return rendered
        folded = fold_messages(history)
        rendered = self._render(folded, add_generation_prompt)
        if rendered is not None and renders_everything(rendered, folded):
            if len(history) > 1:
                log.info("fewstep: the chat template of %s renders one message; system instruction and few-shot "
                         "turns were folded into the user message", self.pretrained)
            return rendered
        roles = ", ".join(m["role"] for m in history)
        raise ConfigError(f"the chat template of {self.pretrained} cannot render this conversation ({roles}) "
                          "without dropping text")

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str | None:
        """The template's text for ``messages``; None when the template refuses them."""
        try:
            return str(self.model.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt))
        except Exception:  # jinja raises TemplateError (and others) for conversations a template refuses
            return None

    # --- what lm-eval records about the model ---

    def get_model_info(self) -> dict[str, Any]:
        """Model, decode configuration and cost, for lm-eval's results (``config``): the forwards per
        request of each request type (``generate_until``: the decode's NFE; ``loglikelihood``: mc_num
        sequences plus one for the greedy check) and a SHA-256 of the model directory."""
        from fewstep import __version__
        from fewstep.models.checksum import model_checksum

        module = self.model.module
        cost = {kind: {**c, "forwards_per_request": c["forwards"] / c["requests"] if c["requests"] else 0.0}
                for kind, c in self._cost.items()}
        return {
            "fewstep_version": __version__,
            "model_num_parameters": sum(p.numel() for p in module.parameters()),
            "model_dtype": str(next(module.parameters()).dtype),
            "model_sha256": model_checksum(self.pretrained),
            "decode_config": self.cfg.to_dict(),
            "loglikelihood_estimator": {"method": "monte-carlo masked-diffusion bound", "mc_num": self.mc_num,
                                        "mc_padding": self.mc_padding},
            "nfe": cost,
        }


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the ``fewstep`` model registered (``argv``: its arguments)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
