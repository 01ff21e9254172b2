"""The FastAPI application: OpenAI-compatible endpoints over the batching engine, metrics, playground.

Endpoints (:mod:`fewstep.serve.routes`): ``POST /v1/completions``, ``POST /v1/chat/completions``
(``stream: true``: server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``), ``GET
/v1/models``, ``GET /v1/strategies`` (every strategy's parameters, for the playground), ``GET
/health``, ``GET /metrics`` (Prometheus) and the playground at ``GET /``.

Every error is an OpenAI-style object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status (5xx only for a failure of the server itself). With ``api_key`` every endpoint except the
playground page and ``/health`` needs ``Authorization: Bearer <key>`` (compared in constant time).
The application's state, a :class:`~fewstep.serve.state.Server`, is ``app.state.server``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fewstep.serve.requests import ServerConfig
from fewstep.serve.routes import STATIC, api, public, read_json
from fewstep.serve.schemas import APIError
from fewstep.serve.state import ClientGone, Server, get_server

__all__ = ["STATIC", "ClientGone", "Server", "create_app", "read_json"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The engine runs while the application does; at shutdown it finishes what is queued."""
    srv: Server = app.state.server
    srv.batcher.start()
    yield
    srv.draining = True
    await asyncio.to_thread(srv.batcher.stop, 30.0)


# --- errors: OpenAI-style objects, counted in the metrics ----------------------------------------------------------

def endpoint_of(request: Request) -> str:
    """The route's path template (a metrics label: never the raw path, which a client chooses)."""
    return getattr(request.scope.get("route"), "path", "other")


def _count(request: Request, endpoint: str, status: int) -> None:
    get_server(request).metrics.requests.labels(endpoint, str(status)).inc()


async def _api_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, APIError)
    _count(request, endpoint_of(request), e.status)
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _client_gone(request: Request, e: Exception) -> Response:
    _count(request, endpoint_of(request), 499)
    return Response(status_code=499)  # nobody is listening: no body


async def _http_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, StarletteHTTPException)
    status = e.status_code
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(status, str(e.detail))
    _count(request, "other", status)
    return JSONResponse(APIError(status, message).body(), status_code=status, headers=e.headers)


async def _unexpected(request: Request, e: Exception) -> Response:
    _count(request, endpoint_of(request), 500)
    return JSONResponse(APIError(500, f"internal error: {type(e).__name__}").body(), status_code=500)


HANDLERS = {APIError: _api_error, ClientDisconnect: _client_gone, StarletteHTTPException: _http_error,
            Exception: _unexpected}


def create_app(model, config: ServerConfig | None = None, api_key: str | None = None, max_batch_size: int = 32,
               max_wait_ms: float = 10.0) -> FastAPI:
    """The application serving ``model`` (a loaded :class:`~fewstep.models.adapter.DiffusionModel`)."""
    if getattr(model, "kind", "") not in ("diffusion", "uniform"):
        from fewstep.errors import ConfigError

        raise ConfigError(f"fewstep serve needs a diffusion model; {model.name} is a {model.kind} model")
    app = FastAPI(title="fewstep", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(model, config or ServerConfig(), api_key, max_batch_size, max_wait_ms)
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    app.include_router(public)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(api)
    return app
