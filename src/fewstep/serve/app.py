"""The FastAPI application: OpenAI-compatible endpoints over the batching engine, metrics, playground.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true``: server-sent
events in OpenAI's chunk format, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET
/v1/strategies`` (every strategy's parameters, for the playground), ``GET /health``, ``GET
/metrics`` (Prometheus) and the playground at ``GET /``.

Every error is an OpenAI-style object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status (5xx only for a failure of the server itself). With ``api_key`` every endpoint except the
playground page and ``/health`` needs ``Authorization: Bearer <key>`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files
from itertools import count
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fewstep.serve.batcher import Batcher, Job, QueueFull, RowDone, RowUpdate
from fewstep.serve.metrics import Metrics
from fewstep.serve.requests import (
    ServerConfig,
    batch_key,
    chat_prompt,
    committed_is_final,
    completion_prompts,
    request_config,
)
from fewstep.serve.schemas import APIError, ChatRequest, CompletionRequest, parse
from fewstep.serve.stream import TextStream, cut_at_stop

STATIC = files("fewstep.serve") / "static"


def _no_constants(name: str) -> Any:
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON number", "invalid_json")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (413), invalid JSON, NaN and infinities (400)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is larger than this server's limit of {limit} bytes", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                           "body_too_large")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, APIError):
            raise
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}", "invalid_json") from None


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

    def submit(self, rows: list[tuple[list[int], str | None]], cfg, watch: bool) -> tuple[list[Job], asyncio.Queue]:
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
                raise APIError(504, f"the request took longer than this server's limit of "
                                    f"{self.config.limits.timeout_s:g} s", "timeout")
            try:
                i, item = await asyncio.wait_for(queue.get(), min(wait, 1.0))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    raise ClientGone() from None
                continue
            if isinstance(item, Exception):
                raise APIError(500, f"decoding failed: {type(item).__name__}: {item}", "engine_error")
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
            for k in ("injected", "confirmed", "revoked"):
                out[k] = sum(getattr(d.result, k) for d in dones)
        return out


class ClientGone(Exception):
    """The client closed the connection before its answer."""


def _finish_reason(result, stopped: bool) -> str:
    return "stop" if stopped or result.answer_tokens < len(result.token_ids) else "length"


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(model, config: ServerConfig | None = None, api_key: str | None = None, max_batch_size: int = 32,
               max_wait_ms: float = 10.0) -> FastAPI:
    """The application serving ``model`` (a loaded :class:`~fewstep.models.adapter.DiffusionModel`)."""
    if getattr(model, "kind", "") != "diffusion":
        from fewstep.errors import ConfigError

        raise ConfigError(f"fewstep serve needs a masked diffusion model; {model.name} is a {model.kind} model")
    srv = Server(model, config or ServerConfig(), api_key, max_batch_size, max_wait_ms)
    limits = srv.config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv.batcher.start()
        yield
        srv.draining = True
        await asyncio.to_thread(srv.batcher.stop, 30.0)

    app = FastAPI(title="fewstep", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    def record(endpoint: str, status: int, t0: float) -> None:
        srv.metrics.requests.labels(endpoint, str(status)).inc()
        srv.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)

    def endpoint_of(request: Request) -> str:
        """The route's path template (a metrics label: never the raw path, which a client chooses)."""
        return getattr(request.scope.get("route"), "path", "other")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        srv.metrics.requests.labels(endpoint_of(request), str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, e: ClientDisconnect) -> Response:
        srv.metrics.requests.labels(endpoint_of(request), "499").inc()
        return Response(status_code=499)  # nobody is listening: no body

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        status = e.status_code
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(status, str(e.detail))
        srv.metrics.requests.labels("other", str(status)).inc()
        return JSONResponse(APIError(status, message).body(), status_code=status, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        srv.metrics.requests.labels(endpoint_of(request), "500").inc()
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}").body(), status_code=500)

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/health")
    async def health() -> JSONResponse:
        status = 503 if srv.draining else 200
        return JSONResponse({"status": "shutting_down" if srv.draining else "ok", "model": srv.model_id,
                             "queue": len(srv.batcher._pending), "batches": srv.batcher.batches}, status_code=status)

    api = APIRouter(dependencies=[Depends(srv.check_auth)])

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [srv.model_card()]}

    @api.get("/v1/models/{name:path}")
    async def model_info(name: str) -> dict[str, Any]:
        srv.check_model(name)
        return srv.model_card()

    @api.get("/v1/strategies")
    async def strategies() -> dict[str, Any]:
        from fewstep.strategies import describe

        cfg = srv.default_cfg
        return {"default": cfg.to_dict(), "strategies": [s for s in describe() if s["name"] != "ar"],
                "limits": {"max_tokens": limits.max_tokens}}

    def completion_rows(body: CompletionRequest, cfg) -> list[tuple[list[int], str | None]]:
        rows = completion_prompts(model, body, cfg, limits)
        if body.stream and len(rows) > 1:
            raise APIError(400, "stream: one prompt per streamed request", "invalid_value", "prompt")
        if len(rows) > limits.max_queue:
            raise APIError(400, f"prompt: at most {limits.max_queue} prompts per request", "invalid_value", "prompt")
        return rows

    def chat_rows(body: ChatRequest, cfg) -> list[tuple[list[int], str | None]]:
        ids, text = chat_prompt(model, body, cfg, limits)
        return [(ids, text)]

    async def handle(request: Request, endpoint: str, schema: type, rows_of) -> Response:
        """Validate (body, model, configuration, prompts), queue the rows, answer."""
        t0 = time.monotonic()
        srv.check_open()
        body = parse(schema, await read_json(request, limits.max_body_bytes))
        srv.check_model(body.model)
        cfg = request_config(model, srv.config, body)
        return await respond(request, endpoint, body, cfg, rows_of(body, cfg), t0)

    @api.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "/v1/completions", CompletionRequest, completion_rows)

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, "/v1/chat/completions", ChatRequest, chat_rows)

    async def respond(request: Request, endpoint: str, body, cfg, rows, t0: float) -> Response:
        chat = endpoint.endswith("chat/completions")
        deadline = t0 + limits.timeout_s
        jobs, queue = srv.submit(rows, cfg, watch=body.stream)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": srv.model_id}
        prompt_tokens = sum(len(ids) for ids, _ in rows)
        if body.stream:
            return StreamingResponse(stream(request, endpoint, body, cfg, jobs, queue, head, prompt_tokens, t0,
                                            deadline), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            dones = await srv.results(request, jobs, queue, deadline)
        except ClientGone:
            record(endpoint, 499, t0)
            return Response(status_code=499)
        finally:
            srv.cancel(jobs)
        choices = []
        for i, d in enumerate(dones):
            text, stopped = cut_at_stop(d.result.text, body.stops)
            reason = _finish_reason(d.result, stopped)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                "finish_reason": reason})
            else:
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
        record(endpoint, 200, t0)
        return JSONResponse({**head, "choices": choices, "usage": srv.usage(prompt_tokens, dones),
                             "fewstep": {"strategy": cfg.strategy, "batch_size": [d.batch_size for d in dones],
                                         "queue_s": [round(d.queue_s, 4) for d in dones],
                                         "steps": [d.step + 1 for d in dones]}})

    async def stream(request: Request, endpoint: str, body, cfg, jobs: list[Job], queue: asyncio.Queue,
                     head: dict[str, Any], prompt_tokens: int, t0: float, deadline: float) -> AsyncIterator[str]:
        chat = endpoint.endswith("chat/completions")
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        text = TextStream(model, body.stops, final_only=not committed_is_final(cfg))
        sent_role = seen_text = False
        status = 200

        def chunk(delta: str, reason: str | None = None, extra: dict[str, Any] | None = None) -> str:
            nonlocal sent_role, seen_text
            if chat:
                d: dict[str, Any] = {"content": delta}
                if not sent_role:
                    d["role"], sent_role = "assistant", True
                choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
            if delta and not seen_text:
                srv.metrics.first_delta.observe(time.monotonic() - t0)
                seen_text = True
            out = {**head, "choices": [choice]}
            if extra is not None:
                out["fewstep"] = extra
            return _sse(out)

        try:
            if chat:
                yield chunk("")
            while True:
                wait = deadline - time.monotonic()
                try:
                    _, item = await asyncio.wait_for(queue.get(), max(wait, 0.001))
                except asyncio.TimeoutError:
                    status = 504
                    yield _sse(APIError(504, f"the request took longer than this server's limit of "
                                             f"{limits.timeout_s:g} s", "timeout").body())
                    break
                if isinstance(item, Exception):
                    status = 500
                    yield _sse(APIError(500, f"decoding failed: {type(item).__name__}: {item}", "engine_error").body())
                    break
                if isinstance(item, RowUpdate):
                    delta = text.update(item.canvas[: item.settled])
                    extra = srv.canvas(item.canvas, item.state, item.committed_at, item.revoked, item.step,
                                       item.nfe, item.injected) if body.canvas else None
                    if text.stopped:  # a stop string ended the answer: reply now, free the row
                        yield chunk(delta, "stop", extra)
                        break
                    if delta or extra is not None:
                        yield chunk(delta, None, extra)
                    continue
                assert isinstance(item, RowDone)
                r = item.result
                delta = text.finish(r.text)
                extra = None
                if body.canvas:
                    extra = srv.canvas(r.token_ids, [2] * len(r.token_ids), r.committed_at, [], item.step, r.nfe, [])
                    extra.update(done=True, usage=srv.usage(prompt_tokens, [item]), batch_size=item.batch_size)
                yield chunk(delta, _finish_reason(r, text.stopped), extra)
                if body.include_usage:
                    yield _sse({**head, "choices": [], "usage": srv.usage(prompt_tokens, [item])})
                break
            yield "data: [DONE]\n\n"
        finally:
            srv.cancel(jobs)
            record(endpoint, status, t0)

    app.include_router(api)
    return app
