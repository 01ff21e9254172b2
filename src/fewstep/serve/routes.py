"""The endpoints, as module-level routes on two routers; the state comes from :func:`get_server`.

- :data:`public`: the playground page (``GET /``) and ``GET /health``, open to everyone;
- :data:`api`: ``GET /metrics``, ``GET /v1/models``, ``GET /v1/models/{name}``, ``GET /v1/strategies``,
  ``POST /v1/completions`` and ``POST /v1/chat/completions``, behind the API key when there is one.

A completion request is read (:func:`read_json`), validated (body, model, configuration, prompts),
its rows queued on the engine, and answered as JSON or as a stream (:mod:`fewstep.serve.replies`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fewstep.serve.replies import completion_body, event_stream, response_head
from fewstep.serve.requests import chat_prompt, completion_prompts, request_config
from fewstep.serve.schemas import APIError, ChatRequest, CompletionRequest, parse
from fewstep.serve.state import ClientGone, InFlight, Rows, Server, get_server

STATIC = files("fewstep.serve") / "static"
ServerDep = Annotated[Server, Depends(get_server)]  # a route's argument: the application's state


def _no_constants(name: str) -> Any:
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON number", "invalid_json")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes", "body_too_large")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (413), invalid JSON, NaN and infinities (400)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, APIError):
            raise
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}", "invalid_json") from None


def check_auth(request: Request, srv: ServerDep) -> None:
    """The API key, when the server has one (a dependency of every :data:`api` route)."""
    srv.check_auth(request)


public = APIRouter()
api = APIRouter(dependencies=[Depends(check_auth)])


# --- open to everyone -------------------------------------------------------------------------------------------

@public.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"))


@public.get("/health")
async def health(srv: ServerDep) -> JSONResponse:
    status = 503 if srv.draining else 200
    return JSONResponse({"status": "shutting_down" if srv.draining else "ok", "model": srv.model_id,
                         "queue": len(srv.batcher._pending), "batches": srv.batcher.batches}, status_code=status)


# --- behind the API key -----------------------------------------------------------------------------------------

@api.get("/metrics")
async def metrics(srv: ServerDep) -> Response:
    return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/v1/models")
async def models(srv: ServerDep) -> dict[str, Any]:
    return {"object": "list", "data": [srv.model_card()]}


@api.get("/v1/models/{name:path}")
async def model_info(name: str, srv: ServerDep) -> dict[str, Any]:
    srv.check_model(name)
    return srv.model_card()


@api.get("/v1/strategies")
async def strategies(srv: ServerDep) -> dict[str, Any]:
    from fewstep.strategies import describe, model_kind

    usable = [s for s in describe() if model_kind(s["name"]) == srv.model.kind]
    return {"default": srv.default_cfg.to_dict(), "strategies": usable,
            "limits": {"max_tokens": srv.config.limits.max_tokens}}


@api.post("/v1/completions")
async def completions(request: Request, srv: ServerDep) -> Response:
    return await _handle(request, srv, "/v1/completions", CompletionRequest, _completion_rows)


@api.post("/v1/chat/completions")
async def chat(request: Request, srv: ServerDep) -> Response:
    return await _handle(request, srv, "/v1/chat/completions", ChatRequest, _chat_rows)


# --- a completion request ---------------------------------------------------------------------------------------

def _completion_rows(srv: Server, body: CompletionRequest, cfg) -> Rows:
    limits = srv.config.limits
    rows = completion_prompts(srv.model, body, cfg, limits)
    if body.stream and len(rows) > 1:
        raise APIError(400, "stream: one prompt per streamed request", "invalid_value", "prompt")
    if len(rows) > limits.max_queue:
        raise APIError(400, f"prompt: at most {limits.max_queue} prompts per request", "invalid_value", "prompt")
    return rows


def _chat_rows(srv: Server, body: ChatRequest, cfg) -> Rows:
    ids, text = chat_prompt(srv.model, body, cfg, srv.config.limits)
    return [(ids, text)]


async def _handle(request: Request, srv: Server, endpoint: str, schema: type,
                  rows_of: Callable[[Server, Any, Any], Rows]) -> Response:
    """Validate (body, model, configuration, prompts), queue the rows, answer."""
    t0 = time.monotonic()
    srv.check_open()
    body = parse(schema, await read_json(request, srv.config.limits.max_body_bytes))
    srv.check_model(body.model)
    cfg = request_config(srv.model, srv.config, body)
    rows = rows_of(srv, body, cfg)
    jobs, queue = srv.submit(rows, cfg, watch=body.stream)
    head = response_head(endpoint.endswith("chat/completions"), srv.model_id)
    prompt_tokens = sum(len(ids) for ids, _ in rows)
    call = InFlight(request, endpoint, body, cfg, jobs, queue, head, prompt_tokens, t0,
                    t0 + srv.config.limits.timeout_s)
    if body.stream:
        return StreamingResponse(event_stream(srv, call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _answer(srv, call)


async def _answer(srv: Server, call: InFlight) -> Response:
    """The whole answer once every row is done (499, with no body, when the client has left)."""
    try:
        dones = await srv.results(call.request, call.jobs, call.queue, call.deadline)
    except ClientGone:
        srv.record(call.endpoint, 499, call.t0)
        return Response(status_code=499)
    finally:
        srv.cancel(call.jobs)
    srv.record(call.endpoint, 200, call.t0)
    return JSONResponse(completion_body(srv, call, dones))
