"""Helpers shared by the serve tests (tests/test_serve*.py): the questions asked, the server's limits,
what ``fewstep generate`` answers, and a small HTTP client for a real server."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import uvicorn

import fewstep
from fewstep.config import resolve_config
from fewstep.serve.requests import Limits
from fewstep.tasks import arith

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [p.question for p in arith.test_set()[:16]]
LIMITS = Limits(max_tokens=64, max_prompt_tokens=600, max_body_bytes=16384, max_queue=256, timeout_s=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uvicorn(uvicorn.Server):
    """uvicorn, setting ``ready`` once it listens or has given up starting."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    def run(self, sockets=None) -> None:
        try:
            super().run(sockets)
        finally:
            self.ready.set()


def generate(model, prompt, strategy=None, settings=()):
    """What ``fewstep generate PROMPT --strategy S --set ...`` answers (text prompt) or
    ``fewstep.generate`` on token ids."""
    cfg = resolve_config(model, strategy, list(settings))
    return fewstep.generate(model, [prompt], cfg)[0]


def post(base: str, path: str, body: dict, timeout: float = 120) -> tuple[int, dict | list]:
    """POST JSON with the standard library; -> status and the JSON answer (a list of SSE chunks when streaming)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    if body.get("stream") and resp.status == 200:
        return resp.status, sse(raw)
    return resp.status, json.loads(raw)


def sse(raw: str) -> list:
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def streamed_text(chunks: list, chat: bool) -> str:
    if chat:
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
