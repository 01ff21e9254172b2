"""A request's decode configuration and prompt token ids.

The configuration goes through the CLI's own path: the request's ``settings`` become ``key=value``
strings, checked by :func:`fewstep.config.check_settings` (NaN, infinities, integers beyond 64 bits)
and applied (unknown keys, a parameter of another strategy, out-of-range values are refused) on top
of the server's configuration by the one function that resolves every configuration,
:func:`fewstep.config.resolve_config` (``--strategy`` / ``--set`` / ``--drafter``, then the
request), so a request is refused with exactly the message ``fewstep generate --set`` prints and
a drafter brings the same warm-start settings as on the command line (the model's recommended ones
where neither the server nor the request sets any). ``max_tokens`` is the generation length; block
length and llada's steps follow it where they equalled the old one (as a task's generation length
does in ``fewstep eval``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from fewstep.config import (
    DecodeConfig,
    check_settings,
    resolve_config,
    setting_names,
    split_assignment,
)
from fewstep.errors import FewstepError
from fewstep.serve.schemas import APIError, ChatRequest, CompletionRequest
from fewstep.strategies import model_kind


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512  # generation length
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1 << 20
    max_queue: int = 256  # requests waiting (rows of multi-prompt completions count one each)
    timeout_s: float = 600.0  # from arrival to the last byte
    drafters: tuple[str, ...] = ("tiny-ar",)  # the drafters a request may name (bundled names, --drafter)


@dataclass(frozen=True)
class ServerConfig:
    """The server's own decode configuration (``--strategy``, ``--set``, ``--drafter``)."""

    strategy: str | None = None
    settings: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


def _assignment(key: str, value: Any) -> str:
    """A JSON setting as the ``key=value`` string ``--set`` would take."""
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def request_config(model, server: ServerConfig, body: CompletionRequest | ChatRequest) -> DecodeConfig:
    """The request's DecodeConfig: the server's, then ``max_tokens``, then the request's settings
    (:func:`fewstep.config.resolve_config`)."""
    settings = [_assignment(k, v) for k, v in (body.settings or {}).items()]
    if body.temperature is not None:
        settings.append(_assignment("temperature", float(body.temperature)))
    if body.seed is not None:
        settings.append(_assignment("seed", body.seed))
    try:
        check_settings(settings)
        strategy = body.strategy or server.strategy
        base_settings = list(server.settings)
        if body.strategy:  # the server's settings that the chosen strategy also has
            names = set(setting_names(body.strategy)) - {"strategy"}
            base_settings = [s for s in base_settings if split_assignment(s)[0] in names]
        cfg = resolve_config(model, strategy, base_settings, gen_length=body.max_tokens, request=settings)
    except FewstepError as e:
        raise APIError(400, str(e), "invalid_settings", "settings") from None
    if body.max_tokens is not None and cfg.gen_length != body.max_tokens:
        raise APIError(400, f"max_tokens ({body.max_tokens}) and settings.gen_length ({cfg.gen_length}) differ",
                       "invalid_settings", "max_tokens")
    if cfg.gen_length > server.limits.max_tokens:
        raise APIError(400, f"max_tokens (generation length) {cfg.gen_length} exceeds this server's limit of "
                            f"{server.limits.max_tokens}", "max_tokens_exceeded", "max_tokens")
    if model_kind(cfg.strategy) != model.kind:
        raise APIError(400, f"strategy {cfg.strategy!r} needs a {model_kind(cfg.strategy)} model; {model.name} is a "
                            f"{model.kind} model", "invalid_settings", "strategy")
    if cfg.drafter and cfg.drafter not in server.limits.drafters:
        raise APIError(400, f"drafter {cfg.drafter!r} is not served here; allowed: "
                            f"{', '.join(server.limits.drafters) or 'none'}", "invalid_settings", "settings")
    return cfg


def batch_key(cfg: DecodeConfig, unique: int) -> Hashable:
    """What a request may share a batch with. At temperature 0 the engine is batch-invariant with
    left padding, so requests with one configuration share batches. Requests that draw from the
    decode's random generator (temperature > 0, random remasking: one generator per batch), that
    sample their tokens (a uniform-state model's ``uniform_eb`` with ``sample=true``) or that run
    a drafter (its batched autoregressive decode is not checked for batch invariance) are decoded
    alone (``unique``), so each equals the same request sent alone. (``uniform_eb`` draws from one
    generator per row, so its random stream does not depend on the batch; but a draw turns the
    last-bit differences between a row's logits in a left-padded batch and alone into a different
    token: about one row in a hundred on a tiny random DiffusionGemma. Its argmax, ``sample=false``,
    is as batch-invariant as greedy decoding.)"""
    if cfg.temperature > 0 or cfg.remasking == "random" or cfg.drafter or samples(cfg):
        return ("alone", unique)
    return cfg


def samples(cfg: DecodeConfig) -> bool:
    """Whether the strategy draws its tokens from a distribution (a ``sample`` parameter set)."""
    return bool(getattr(cfg.params, "sample", False))


def committed_is_final(cfg: DecodeConfig) -> bool:
    """Whether a committed token can never be revoked or replaced in this configuration: no warm
    start (its revise stage), no bounded revision, and a policy that declares it ``revokes`` nothing."""
    from fewstep.strategies import make_policy

    return not cfg.drafter and cfg.revise_threshold == 0 and not make_policy(cfg).revokes


def _vocab_size(model) -> int:
    return int(model.embedding_table().shape[0])


def _check_ids(model, ids: list[int], where: str, limits: Limits, gen_length: int) -> list[int]:
    if not ids:
        raise APIError(400, f"{where} is empty", "empty_prompt", where)
    vocab = _vocab_size(model)
    bad = next((t for t in ids if not 0 <= t < vocab or t == model.mask_id), None)
    if bad is not None:
        mask = f", mask id {model.mask_id}" if model.mask_id >= 0 else ""  # a uniform-state model has none
        raise APIError(400, f"{where}: token id {bad} is not a prompt token of {model.name} (vocabulary {vocab}"
                            f"{mask})", "invalid_token", where)
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"{where} has {len(ids)} tokens; this server's limit is {limits.max_prompt_tokens}",
                       "prompt_too_long", where)
    if len(ids) + gen_length > model.max_length:
        raise APIError(400, f"{where} has {len(ids)} tokens; with max_tokens={gen_length} it exceeds the model's "
                            f"context of {model.max_length} tokens", "context_length_exceeded", where)
    return ids


def completion_prompts(model, body: CompletionRequest, cfg: DecodeConfig,
                       limits: Limits) -> list[tuple[list[int], str | None]]:
    """-> (token ids, text or None) per prompt. Text is encoded as it is (no chat template)."""
    out = []
    prompts = body.prompts
    if not prompts:
        raise APIError(400, "prompt is empty", "empty_prompt", "prompt")
    for i, p in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        ids = list(model.tokenizer.encode(p)) if isinstance(p, str) else list(p)
        if isinstance(p, str) and len(p) > limits.max_prompt_tokens * 64:
            raise APIError(400, f"{where} is too long", "prompt_too_long", where)
        out.append((_check_ids(model, ids, where, limits, cfg.gen_length), p if isinstance(p, str) else None))
    if cfg.drafter and any(text is None for _, text in out):
        raise APIError(400, "a drafter needs the prompt as text (its tokenizer is not the model's)",
                       "invalid_settings", "prompt")
    return out


def chat_prompt(model, body: ChatRequest, cfg: DecodeConfig, limits: Limits) -> tuple[list[int], str]:
    """-> token ids and the last user message. One user message is encoded exactly as ``fewstep
    generate`` encodes a prompt (the model's chat template, if any); a conversation goes through
    the chat template whole (without one: the messages' texts, one per line)."""
    msgs = body.messages
    if sum(len(m.text) for m in msgs) > limits.max_prompt_tokens * 64:
        raise APIError(400, "messages are too long", "prompt_too_long", "messages")
    tok = model.tokenizer
    if len(msgs) == 1:
        ids = model.encode_prompt(msgs[0].text)
    elif getattr(tok, "chat_template", None):
        try:
            ids = list(tok.apply_chat_template([{"role": m.role, "content": m.text} for m in msgs],
                                               add_generation_prompt=True, tokenize=True, return_dict=False))
        except Exception as e:  # a template may refuse a conversation (roles it does not know)
            raise APIError(400, f"the chat template refused these messages: {e}", "invalid_messages",
                           "messages") from None
    else:
        ids = list(tok.encode("\n".join(m.text for m in msgs)))
    return _check_ids(model, ids, "messages", limits, cfg.gen_length), msgs[-1].text
