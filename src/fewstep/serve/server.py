"""``fewstep serve``: the application under uvicorn, with graceful shutdown.

On SIGTERM (or Ctrl-C) the server stops listening, answers requests that still arrive on open
connections with 503, lets the requests in flight finish (streams included), then stops the
engine. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from fewstep.serve.app import create_app
from fewstep.serve.requests import ServerConfig


class _Uvicorn(uvicorn.Server):
    """uvicorn, marking the application as draining the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, app_state):
        super().__init__(config)
        self.app_state = app_state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app_state.draining = True
        super().handle_exit(sig, frame)


def serve(model, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch_size: int = 32, max_wait_ms: float = 10.0, log_level: str = "info") -> None:
    """Serve ``model`` until a shutdown signal."""
    app = create_app(model, config, api_key=api_key, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None,
                         access_log=log_level == "debug")
    _Uvicorn(cfg, app.state.server).run()
