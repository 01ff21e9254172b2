"""Request bodies of the OpenAI-compatible endpoints, and the OpenAI-style error object.

Bodies are strict (``extra="forbid"``, no type coercion, no NaN / infinity): a field the server
does not know, or a value of the wrong type, is a 400 that names it rather than something quietly
ignored. OpenAI fields that fewstep cannot honour (``logprobs``, ``n`` > 1, penalties, ...) are
accepted only at their neutral value. Two extra fields carry the decode settings: ``strategy`` (a
name) and ``settings`` (``{"key": value}``, the keys of ``fewstep generate --set``); ``canvas``
asks streamed chunks to carry the whole canvas (the playground draws it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "server_error", 504: "timeout_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


SettingValue = str | int | float | bool


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    strategy: str | None = None
    settings: dict[str, SettingValue] | None = None
    canvas: bool = False
    # OpenAI fields accepted at their neutral value only
    n: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _neutral(self) -> _Body:
        unsupported = {"n": (self.n, (None, 1)), "top_p": (self.top_p, (None, 1)),
                       "presence_penalty": (self.presence_penalty, (None, 0)),
                       "frequency_penalty": (self.frequency_penalty, (None, 0)),
                       "logit_bias": (self.logit_bias, (None, {}))}
        for name, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported (fewstep accepts only {allowed[1]!r})")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        if self.stream_options is not None and set(self.stream_options) - {"include_usage"}:
            raise ValueError("stream_options: only include_usage is supported")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported (a diffusion decode has no left-to-right token probabilities)")
        if self.echo or self.suffix is not None or self.best_of not in (None, 1):
            raise ValueError("echo, suffix and best_of are not supported")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None

    @model_validator(mode="after")
    def _chat_only(self) -> ChatRequest:
        if self.logprobs:
            raise ValueError("logprobs is not supported (a diffusion decode has no left-to-right token probabilities)")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ")
            self.max_tokens = self.max_completion_tokens
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's")
        return self


def parse(cls: type[_Body], obj: Any) -> Any:
    """``cls`` from a decoded JSON value; a 400 naming the first bad field otherwise."""
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_body")
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise APIError(400, f"{where + ': ' if where else ''}{message}", "invalid_value", where or None) from None
