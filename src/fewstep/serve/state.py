"""The application's state (:class:`Server`, on ``app.state.server``) and a request in flight.

Routes reach the state through the dependency :func:`get_server`. A :class:`Server` holds the
model, the server's configuration, the engine (:class:`~fewstep.serve.batcher.Batcher`) and the
metrics; it queues a request's rows and collects what the engine delivers for them.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from functools import partial
from itertools import count
from pathlib import PurePath
from typing import Any

from starlette.requests import Request

from fewstep.serve.batcher import Batcher, Job, QueueFull, RowDone
from fewstep.serve.metrics import Metrics
from fewstep.serve.requests import ServerConfig, batch_key
from fewstep.serve.schemas import APIError

Rows = list[tuple[list[int], str | None]]  # a request's prompts: (token ids, text or None)


class ClientGone(Exception):
    """The client closed the connection before its answer."""


class Server:
    """The application's state: model, configuration, engine, metrics."""

    def __init__(self, model, config: ServerConfig, api_key: str | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 10.0):
        from fewstep.config import resolve_config  # the server's own configuration is checked at start

        self.model, self.config, self.api_key = model, config, api_key
        self.model_id = PurePath(model.name).name or model.name  # a directory is served by its last part
        self.default_cfg = resolve_config(model, config.strategy, list(config.settings))
        self.metrics = Metrics()
        self.batcher = Batcher(model, max_batch_size, max_wait_ms / 1000, config.limits.max_queue, self.metrics)
        self.draining = False
        self._ids = count()
        self._pieces: dict[int, str] = {}

    # --- helpers -------------------------------------------------------------------------------
    def piece(self, token: int) -> str:
        """The text of one token (for drawing the canvas)."""
        text = self._pieces.get(token)
        if text is None:
            text = self._pieces[token] = self.model.tokenizer.decode([token])
        return text

    def canvas(self, ids: list[int], state: list[int], committed_at: list[int], revoked: list[int], step: int,
               nfe: int, injected: list[int]) -> dict[str, Any]:
        """A chunk's ``fewstep`` field: the whole canvas after a step."""
        mask = self.model.mask_id
        return {"step": step, "nfe": nfe, "tokens": [None if t == mask else self.piece(t) for t in ids],
                "state": state, "committed_at": committed_at, "revoked": revoked, "injected": injected}

    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)", "invalid_api_key")

    def check_model(self, name: str) -> None:
        if name not in (self.model_id, self.model.name):
            raise APIError(404, f"model {name!r} is not served here; this server serves {self.model_id!r}",
                           "model_not_found", "model")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": 0, "owned_by": "fewstep"}

    def check_open(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", "shutting_down")

    def record(self, endpoint: str, status: int, t0: float) -> None:
        """Count an answered request and its latency."""
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)

    def timeout_error(self) -> APIError:
        return APIError(504, f"the request took longer than this server's limit of "
                             f"{self.config.limits.timeout_s:g} s", "timeout")

    # --- the engine ----------------------------------------------------------------------------
    def submit(self, rows: Rows, cfg, watch: bool) -> tuple[list[Job], asyncio.Queue]:
        """Queue a request's rows; their deliveries arrive on the returned queue as (row, item)."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue[tuple[int, Any]]()

        def deliver(i: int, item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (i, item))

        jobs = [Job(ids, text, cfg, batch_key(cfg, next(self._ids)), partial(deliver, i), watch=watch)
                for i, (ids, text) in enumerate(rows)]
        try:
            self.batcher.submit(jobs)
        except QueueFull as e:
            raise APIError(429, "the server is busy: its queue is full; retry later", "queue_full",
                           headers={"Retry-After": str(int(e.retry_after + 0.999))}) from None
        return jobs, queue

    def cancel(self, jobs: list[Job]) -> None:
        for j in jobs:
            j.cancelled = True
        self.batcher.wake()

    async def results(self, request: Request, jobs: list[Job], queue: asyncio.Queue, deadline: float) -> list[RowDone]:
        """Every row's RowDone, in row order; APIError 504 past the deadline; ClientGone when the client has left."""
        done: list[RowDone | None] = [None] * len(jobs)
        left = len(jobs)
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise self.timeout_error()
            try:
                i, item = await asyncio.wait_for(queue.get(), min(wait, 1.0))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    raise ClientGone() from None
                continue
            if isinstance(item, Exception):
                raise engine_error(item)
            if isinstance(item, RowDone):
                done[i] = item
                left -= 1
        return [d for d in done if d is not None]

    def usage(self, prompt_tokens: int, dones: list[RowDone]) -> dict[str, Any]:
        answer = sum(d.result.answer_tokens for d in dones)
        nfe = sum(d.result.nfe for d in dones)
        out = {"prompt_tokens": prompt_tokens, "completion_tokens": answer, "total_tokens": prompt_tokens + answer,
               "nfe": nfe, "tokens_per_forward": round(answer / nfe, 4) if nfe else 0.0}
        drafter = sum(d.result.drafter_nfe for d in dones)
        if drafter:  # a warm start: the drafter's forwards and what became of its draft
            out["drafter_nfe"] = drafter
            for k in ("injected", "confirmed", "revoked", "edited"):
                out[k] = sum(getattr(d.result, k) for d in dones)
        return out


def engine_error(e: Exception) -> APIError:
    """The answer to a failure the engine delivered for a row."""
    return APIError(500, f"decoding failed: {type(e).__name__}: {e}", "engine_error")


def get_server(request: Request) -> Server:
    """The application's :class:`Server` (a FastAPI dependency)."""
    return request.app.state.server


@dataclass
class InFlight:
    """A request whose rows are queued: what answering it needs."""

    request: Request
    endpoint: str  # the route's path, a metrics label
    body: Any  # CompletionRequest or ChatRequest
    cfg: Any  # DecodeConfig
    jobs: list[Job]
    queue: asyncio.Queue  # (row, RowUpdate | RowDone | Exception) as the engine delivers them
    head: dict[str, Any]  # id, object, created, model
    prompt_tokens: int
    t0: float  # when the request arrived (time.monotonic)
    deadline: float

    @property
    def chat(self) -> bool:
        return self.endpoint.endswith("chat/completions")
