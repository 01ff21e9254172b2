"""fewstep serve: OpenAI-compatible endpoints, batching, limits and bad input, graceful shutdown.

Answers are checked against ``fewstep.generate`` with the configuration ``fewstep generate``
would build (:func:`fewstep.config.resolve_config`), on the bundled tiny-dlm.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn
from fastapi.testclient import TestClient

import fewstep
from fewstep.config import resolve_config
from fewstep.serve.app import create_app
from fewstep.serve.batcher import Job, RowDone, RowUpdate
from fewstep.serve.requests import Limits, ServerConfig, batch_key
from fewstep.serve.stream import TextStream, cut_at_stop, hold_back
from fewstep.tasks import arith

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [p.question for p in arith.test_set()[:16]]
LIMITS = Limits(max_tokens=64, max_prompt_tokens=600, max_body_bytes=16384, max_queue=256, timeout_s=120)


@pytest.fixture(scope="module")
def model(tiny_dlm):
    """The bundled tiny-dlm (conftest's ``tiny_dlm``, loaded once per session)."""
    return tiny_dlm


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(limits=LIMITS), max_wait_ms=1)) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Uvicorn(uvicorn.Server):
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


@pytest.fixture(scope="module")
def live(model):
    """A real uvicorn server on a free loopback port, in a thread of this process."""
    app = create_app(model, ServerConfig(limits=LIMITS), max_batch_size=16, max_wait_ms=100)
    server = _Uvicorn(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(120) and server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(30)


def _generate(model, prompt, strategy=None, settings=()):
    """What ``fewstep generate PROMPT --strategy S --set ...`` answers (text prompt) or
    ``fewstep.generate`` on token ids."""
    cfg = resolve_config(model, strategy, list(settings))
    return fewstep.generate(model, [prompt], cfg)[0]


def _post(base: str, path: str, body: dict, timeout: float = 120) -> tuple[int, dict | list]:
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
        return resp.status, _sse(raw)
    return resp.status, json.loads(raw)


def _sse(raw: str) -> list:
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _streamed_text(chunks: list, chat: bool) -> str:
    if chat:
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


# --- endpoints: answers equal fewstep generate ------------------------------------------------------------------

CASES = [  # (strategy, settings, max_tokens) and the --set list fewstep generate gets for them
    (None, {}, None, []),
    ("llada", {"steps": 8}, 16, ["gen_length=16", "block_length=16", "steps=8"]),
    ("cad", {"tau": 0.9}, 24, ["tau=0.9"]),
    ("threshold", {"threshold": 0.8, "block_length": 8, "early_stop": True}, 32,
     ["gen_length=32", "block_length=8", "threshold=0.8", "early_stop=true"]),
]


@pytest.mark.parametrize("strategy,settings,max_tokens,cli", CASES)
def test_chat_equals_fewstep_generate(client, model, strategy, settings, max_tokens, cli):
    for q in QUESTIONS[:3]:
        body = {"model": "tiny-dlm", "messages": [{"role": "user", "content": q}], "settings": settings}
        if strategy:
            body["strategy"] = strategy
        if max_tokens:
            body["max_tokens"] = max_tokens
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        ref = _generate(model, q, strategy, cli)
        assert out["object"] == "chat.completion"
        assert out["choices"][0]["message"] == {"role": "assistant", "content": ref.text}
        assert out["choices"][0]["finish_reason"] == ("stop" if ref.answer_tokens < len(ref.token_ids) else "length")
        usage = out["usage"]
        assert (usage["nfe"], usage["completion_tokens"]) == (ref.nfe, ref.answer_tokens)
        assert usage["prompt_tokens"] == len(model.encode_prompt(q))
        assert usage["tokens_per_forward"] == pytest.approx(ref.tokens_per_forward, abs=1e-4)


def test_completions_take_text_and_token_ids(client, model):
    text = "Q: " + QUESTIONS[0] + " A:"
    ids = list(model.tokenizer.encode(text))
    ref = _generate(model, ids, "cad", [])
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": text, "strategy": "cad"}).json()
    assert r["choices"][0]["text"] == ref.text and r["usage"]["nfe"] == ref.nfe
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": ids, "strategy": "cad"}).json()
    assert r["choices"][0]["text"] == ref.text
    texts = ["Q: " + q + " A:" for q in QUESTIONS[:3]]
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": texts, "strategy": "cad"}).json()
    refs = [_generate(model, list(model.tokenizer.encode(t)), "cad", []) for t in texts]
    assert [c["text"] for c in r["choices"]] == [x.text for x in refs]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert r["usage"]["nfe"] == sum(x.nfe for x in refs)


def test_models_health_metrics(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-dlm"
    assert client.get("/v1/models/tiny-dlm").status_code == 200
    assert client.get("/v1/models/other").status_code == 404
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": "Q: 1 + 1 A:", "max_tokens": 8})
    text = client.get("/metrics").text
    for name in ("fewstep_requests_total", "fewstep_nfe_total", "fewstep_batch_size_bucket", "fewstep_queue_depth",
                 "fewstep_request_seconds_bucket", "fewstep_completion_tokens_total"):
        assert name in text
    assert 'fewstep_requests_total{endpoint="/v1/models/{name:path}",status="404"}' in text  # the route, not the path
    batches = next(line for line in text.splitlines() if line.startswith("fewstep_batch_size_count"))
    assert float(batches.split()[-1]) >= 1
    strategies = client.get("/v1/strategies").json()
    assert "cad" in [s["name"] for s in strategies["strategies"]] and strategies["default"]["strategy"] == "llada"


def test_playground_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'data-part="canvas"' in page.text and "playground.js" in page.text
    assert "drawCanvas" in client.get("/static/playground.js").text


# --- streaming --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chat", [True, False])
def test_stream_deltas_add_up_to_the_answer(client, model, chat):
    for q in QUESTIONS[:6]:
        body = {"model": "tiny-dlm", "max_tokens": 24, "strategy": "threshold", "settings": {"threshold": 0.7}}
        body.update({"messages": [{"role": "user", "content": q}]} if chat else {"prompt": "Q: " + q + " A:"})
        path = "/v1/chat/completions" if chat else "/v1/completions"
        whole = client.post(path, json=body).json()
        answer = whole["choices"][0]["message"]["content"] if chat else whole["choices"][0]["text"]
        chunks = _sse(client.post(path, json={**body, "stream": True, "canvas": True,
                                              "stream_options": {"include_usage": True}}).text)
        assert _streamed_text(chunks, chat) == answer
        assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"] == []
        steps = [c["fewstep"] for c in chunks if "fewstep" in c]
        masked = [sum(t is None for t in s["tokens"]) for s in steps]
        assert masked == sorted(masked, reverse=True) and masked[-1] == 0 and len(steps[0]["tokens"]) == 24
        assert steps[-1]["done"] and steps[-1]["usage"]["nfe"] == whole["usage"]["nfe"]
        assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_stream_sends_text_before_the_end(client):
    """llada at one token per step settles the answer left to right: text arrives while decoding."""
    body = {"model": "tiny-dlm", "messages": [{"role": "user", "content": QUESTIONS[2]}], "stream": True,
            "canvas": True}
    chunks = _sse(client.post("/v1/chat/completions", json=body).text)
    with_text = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(with_text) >= 3 and not with_text[0].get("fewstep", {}).get("done")


def test_stream_holds_text_when_commits_can_be_revoked(client, model):
    body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[1] + " A:", "stream": True,
            "settings": {"revise_threshold": 0.3}}
    chunks = _sse(client.post("/v1/completions", json=body).text)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert [t for t in texts if t] == [texts[-1]] and texts[-1]  # one delta: the whole answer, at the end


def test_stop_strings(client):
    body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[1] + " A:", "stop": ["=", "####"]}
    whole = client.post("/v1/completions", json={**body, "stop": None}).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json=body).json()["choices"][0]
    assert "=" in whole and r["text"] == whole[: whole.index("=")] and r["finish_reason"] == "stop"
    chunks = _sse(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert _streamed_text(chunks, False) == r["text"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_stream_rules():
    assert cut_at_stop("7 + 5 = 12", ["=", "+"]) == ("7 ", True)
    assert cut_at_stop("7 + 5", ["="]) == ("7 + 5", False)
    assert hold_back("12 . ##", ["####"]) == "12 . "
    assert hold_back("12 \ufffd", []) == "12 "

    class Words:  # a model whose tokens are words: decode joins them, 0 is EOS
        def answer_length(self, ids):
            return ids.index(0) if 0 in ids else len(ids)

        def decode(self, ids):
            return " ".join(str(i) for i in ids[: self.answer_length(ids)])

    s = TextStream(Words(), [], final_only=False)
    assert s.update([7, 8]) == "7"  # the last settled token is held back
    assert s.update([7, 8, 9, 0]) == " 8 9"  # an EOS settles everything before it
    assert s.finish("7 8 9") == ""
    final_only = TextStream(Words(), [], final_only=True)
    assert final_only.update([7, 8, 9]) == "" and final_only.finish("7 8 9") == "7 8 9"


# --- the official openai client against a real server --------------------------------------------------------------

def test_openai_client(live, model):
    openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")
    base, _ = live
    c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    q = QUESTIONS[3]
    ref = _generate(model, q, "cad", ["tau=0.9"])
    extra = {"strategy": "cad", "settings": {"tau": 0.9}}
    chat = c.chat.completions.create(model="tiny-dlm", messages=[{"role": "user", "content": q}], extra_body=extra)
    assert chat.choices[0].message.content == ref.text and chat.usage.completion_tokens == ref.answer_tokens
    stream = c.chat.completions.create(model="tiny-dlm", messages=[{"role": "user", "content": q}], stream=True,
                                       extra_body=extra)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == ref.text
    text = "Q: " + q + " A:"
    ref_c = _generate(model, list(model.tokenizer.encode(text)), "llada", ["steps=12"])
    comp = c.completions.create(model="tiny-dlm", prompt=text, max_tokens=24, extra_body={"settings": {"steps": 12}})
    assert comp.choices[0].text == ref_c.text
    stream = c.completions.create(model="tiny-dlm", prompt=text, max_tokens=24, stream=True,
                                  extra_body={"settings": {"steps": 12}})
    assert "".join(ch.choices[0].text for ch in stream) == ref_c.text
    with pytest.raises(openai.BadRequestError, match="has no setting 'tau'"):
        c.completions.create(model="tiny-dlm", prompt=text, extra_body={"settings": {"tau": 0.5}})
    assert [m.id for m in c.models.list()] == ["tiny-dlm"]


# --- batching -----------------------------------------------------------------------------------------------------

MIXED = [  # strategy, settings, --set list of fewstep generate
    ("llada", {"steps": 8}, ["gen_length=16", "block_length=16", "steps=8"]),
    ("cad", {"tau": 0.9}, ["gen_length=16", "block_length=16", "tau=0.9"]),
    ("threshold", {"threshold": 0.8, "block_length": 8, "early_stop": True},
     ["gen_length=16", "block_length=8", "threshold=0.8", "early_stop=true"]),
    ("llada", {"steps": 16, "temperature": 0.8, "seed": 3},
     ["gen_length=16", "block_length=16", "steps=16", "temperature=0.8", "seed=3"]),
]


def test_64_concurrent_mixed_requests_each_equal_alone(live, model):
    """64 concurrent requests (4 configurations, streamed and not, chat and completions): no error,
    every answer and NFE equal to the request decoded alone, and requests were really batched."""
    base, app = live
    jobs = []
    for i in range(64):
        strategy, settings, cli = MIXED[i % 4]
        q = QUESTIONS[i % len(QUESTIONS)]
        chat, stream = i < 32, (i // 16) % 2 == 1  # every mix of endpoint and streaming, each configuration
        body = {"model": "tiny-dlm", "max_tokens": 16, "strategy": strategy, "settings": settings, "stream": stream}
        body.update({"messages": [{"role": "user", "content": q}]} if chat else {"prompt": "Q: " + q + " A:"})
        prompt = q if chat else list(model.tokenizer.encode("Q: " + q + " A:"))
        jobs.append((body, chat, prompt, strategy, cli))
    before = app.state.server.batcher.batches
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda j: _post(base, "/v1/chat/completions" if j[1] else "/v1/completions", j[0]),
                                jobs))
    assert [status for status, _ in answers] == [200] * 64
    sizes, refs = [], {}
    for (body, chat, prompt, strategy, cli), (_, out) in zip(jobs, answers):
        key = (str(prompt), strategy, tuple(cli))
        ref = refs[key] = refs.get(key) or _generate(model, prompt, strategy, cli)
        if body["stream"]:
            assert _streamed_text(out, chat) == ref.text
            continue
        text = out["choices"][0]["message"]["content"] if chat else out["choices"][0]["text"]
        assert (text, out["usage"]["nfe"]) == (ref.text, ref.nfe)
        sizes.append(out["fewstep"]["batch_size"][0])
    batches = app.state.server.batcher.batches - before
    assert max(sizes) > 1 and batches < 64  # requests shared batches
    sampled = [out["fewstep"]["batch_size"][0] for (body, *_), (_, out) in zip(jobs, answers)
               if body["settings"].get("temperature") and not body["stream"]]
    assert sampled and set(sampled) == {1}  # temperature > 0: decoded alone


def test_early_row_is_reported_before_the_batch_ends(model):
    """Rows are reported at the step they finish (early stop), not when the batch ends."""
    from fewstep.serve.batcher import Batcher

    cfg = resolve_config(model, "threshold", ["gen_length=32", "block_length=8", "early_stop=true", "threshold=0.8"])
    got: list[tuple[int, object]] = []
    jobs = [Job(model.encode_prompt(q), q, cfg, batch_key(cfg, 0), lambda x, i=i: got.append((i, x)))
            for i, q in enumerate(QUESTIONS[:8])]
    Batcher(model)._decode(jobs)
    done = {i: x for i, x in got if isinstance(x, RowDone)}
    alone = [fewstep.generate(model, [q], cfg)[0] for q in QUESTIONS[:8]]
    assert [done[i].result.token_ids for i in range(8)] == [r.token_ids for r in alone]
    assert [done[i].result.nfe for i in range(8)] == [r.nfe for r in alone]
    steps = [done[i].step for i in range(8)]
    assert min(steps) < max(steps)  # the short answers came back first
    order = [i for i, x in got if isinstance(x, RowDone)]
    assert order == sorted(order, key=lambda i: steps[i])


def test_cancelled_rows_are_dropped_and_stop_the_batch(model):
    from fewstep.serve.batcher import Batcher

    cfg = resolve_config(model, "llada", ["gen_length=32", "block_length=32", "steps=32"])
    got: list = []
    jobs: list[Job] = []

    def deliver(item):
        got.append(item)
        jobs[0].cancelled = True  # the client goes away after its first update

    jobs.append(Job(model.encode_prompt(QUESTIONS[0]), None, cfg, batch_key(cfg, 0), deliver, watch=True))
    Batcher(model)._decode(jobs)
    assert len(got) == 1 and isinstance(got[0], RowUpdate)  # the decode stopped at the next step
    b = Batcher(model, max_wait_s=0)
    queued = [Job([3, 4], None, cfg, "k", got.append) for _ in range(3)]
    b.submit(queued)
    queued[0].cancelled = queued[2].cancelled = True
    assert b._take() == [queued[1]]


# --- limits and bad input -----------------------------------------------------------------------------------------

def _big_prompt(n):
    return [10 + i % 100 for i in range(n)]


OK = {"model": "tiny-dlm", "prompt": "Q: 1 + 1 A:", "max_tokens": 8}
BAD = [  # (name, body or raw bytes, status, error code)
    ("malformed JSON", b'{"model": "tiny-dlm", "prompt": ', 400, "invalid_json"),
    ("not UTF-8", b'{"model": "tiny-dlm", "prompt": "\xff\xfe"}', 400, "invalid_json"),
    ("body is a list", b"[1, 2]", 400, "invalid_body"),
    ("NaN literal", b'{"model": "tiny-dlm", "prompt": "x", "temperature": NaN}', 400, "invalid_json"),
    ("Infinity in settings", b'{"model": "tiny-dlm", "prompt": "x", "settings": {"threshold": Infinity}}', 400,
     "invalid_json"),
    ("no model", {"prompt": "x"}, 400, "invalid_value"),
    ("unknown model", {**OK, "model": "gpt-4"}, 404, "model_not_found"),
    ("no prompt", {"model": "tiny-dlm"}, 400, "invalid_value"),
    ("empty prompt", {**OK, "prompt": ""}, 400, "empty_prompt"),
    ("prompt is a number", {**OK, "prompt": 5}, 400, "invalid_value"),
    ("max_tokens 0", {**OK, "max_tokens": 0}, 400, "invalid_value"),
    ("max_tokens as a string", {**OK, "max_tokens": "16"}, 400, "invalid_value"),
    ("max_tokens over the limit", {**OK, "max_tokens": 65}, 400, "max_tokens_exceeded"),
    ("gen_length over the limit", {**OK, "max_tokens": None, "settings": {"gen_length": 72}}, 400,
     "max_tokens_exceeded"),
    ("max_tokens not a multiple of block_length", {**OK, "max_tokens": 12, "settings": {"block_length": 8}}, 400,
     "invalid_settings"),
    ("unknown strategy", {**OK, "strategy": "beam"}, 400, "invalid_settings"),
    ("parameter of another strategy", {**OK, "settings": {"tau": 0.5}}, 400, "invalid_settings"),
    ("unknown setting", {**OK, "settings": {"speed": 3}}, 400, "invalid_settings"),
    ("setting out of range", {**OK, "strategy": "threshold", "settings": {"threshold": 1.5}}, 400, "invalid_settings"),
    ("setting of the wrong type", {**OK, "settings": {"steps": "many"}}, 400, "invalid_settings"),
    ("setting is an object", {**OK, "settings": {"steps": {"n": 3}}}, 400, "invalid_value"),
    ("setting beyond 64 bits", {**OK, "settings": {"seed": 10**30}}, 400, "invalid_settings"),
    ("negative temperature", {**OK, "temperature": -1}, 400, "invalid_value"),
    ("negative seed", {**OK, "seed": -1}, 400, "invalid_value"),
    ("strategy ar", {**OK, "strategy": "ar"}, 400, "invalid_settings"),
    ("drafter not served", {**OK, "settings": {"drafter": "/etc", "init": "inject"}}, 400, "invalid_settings"),
    ("unknown field", {**OK, "frobnicate": True}, 400, "invalid_value"),
    ("n > 1", {**OK, "n": 2}, 400, "invalid_value"),
    ("logprobs", {**OK, "logprobs": 1}, 400, "invalid_value"),
    ("five stop strings", {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value"),
    ("token id out of vocabulary", {**OK, "prompt": [10, 99999]}, 400, "invalid_token"),
    ("mask token in the prompt", {**OK, "prompt": [10, 1, 11]}, 400, "invalid_token"),
    ("prompt over the server's limit", {**OK, "prompt": _big_prompt(601)}, 400, "prompt_too_long"),
    ("prompt beyond the model's context", {**OK, "prompt": _big_prompt(500), "max_tokens": 64}, 400,
     "context_length_exceeded"),
    ("body too large", {**OK, "prompt": "x " * 9000}, 413, "body_too_large"),
    ("stream of several prompts", {**OK, "prompt": ["a", "b"], "stream": True}, 400, "invalid_value"),
    ("more prompts than the queue holds", {**OK, "prompt": ["Q: 1 A:"] * 257}, 400, "invalid_value"),
]
BAD_CHAT = [
    ("no messages", {"model": "tiny-dlm", "messages": []}, 400, "invalid_value"),
    ("last message not the user's", {"model": "tiny-dlm", "messages": [{"role": "assistant", "content": "hi"}]},
     400, "invalid_value"),
    ("unknown role", {"model": "tiny-dlm", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value"),
    ("content of the wrong type", {"model": "tiny-dlm", "messages": [{"role": "user", "content": 3}]}, 400,
     "invalid_value"),
]


def _send(client, path, body):
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json={k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize("name,body,status,code", [(*c,) for c in BAD] + [(*c,) for c in BAD_CHAT],
                         ids=[c[0] for c in BAD + BAD_CHAT])
def test_bad_input(client, name, body, status, code):
    path = "/v1/chat/completions" if "messages" in (body if isinstance(body, dict) else {}) else "/v1/completions"
    r = _send(client, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert "\n" not in err["message"]


def test_the_server_survives_bad_input(client):
    for _, body, _, _ in BAD:
        _send(client, "/v1/completions", body)
    assert client.post("/v1/completions", json=OK).status_code == 200
    assert client.get("/v1/completions").status_code == 405
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"


def test_queue_full_timeout_draining_and_api_key(model):
    """An engine that is not running (no lifespan) holds requests in its queue."""
    app = create_app(model, ServerConfig(limits=Limits(max_queue=2, timeout_s=0.3)), api_key="sekret")
    srv, c = app.state.server, TestClient(app)
    auth = {"Authorization": "Bearer sekret"}
    assert c.post("/v1/completions", json=OK).status_code == 401
    assert c.post("/v1/completions", json=OK, headers={"Authorization": "Bearer nope"}).json()["error"]["code"] == \
        "invalid_api_key"
    assert c.get("/metrics").status_code == 401 and c.get("/health").status_code == 200
    assert c.get("/").status_code == 200
    r = c.post("/v1/completions", json=OK, headers=auth)  # queued, never decoded: the time limit answers
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    chunks = _sse(c.post("/v1/completions", json={**OK, "stream": True}, headers=auth).text)
    assert chunks[-1]["error"]["code"] == "timeout"
    cfg = srv.default_cfg
    srv.batcher.submit([Job([3], None, cfg, "x", lambda x: None) for _ in range(2)])
    r = c.post("/v1/completions", json=OK, headers=auth)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    srv.draining = True
    assert c.post("/v1/completions", json=OK, headers=auth).status_code == 503
    assert c.get("/health").status_code == 503


def test_serve_refuses_a_bad_configuration(capsys):
    from fewstep.cli import main

    assert main(["serve", "--set", "tau=0.5"]) == 2
    assert capsys.readouterr().err.startswith("fewstep: error: strategy 'llada' has no setting 'tau'")
    assert main(["serve", "--port", "0"]) == 2


def test_importing_fewstep_loads_no_server():
    code = "import sys, fewstep, fewstep.serve, fewstep.cli; print('fastapi' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.split() == ["False", "False"]


class _Log:
    """A subprocess's stderr, read on a thread as it comes."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether a line containing ``text`` arrives (False: the stream ended or ``timeout`` passed first)."""
        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._cv:
            self._cv.wait_for(lambda: self._ended or seen(), timeout)
            return seen()

    def text(self) -> str:
        """All of it (once the process has ended)."""
        self._thread.join(30)
        return "".join(self.lines)


def _sse_events(resp):
    """The data of each server-sent event of a streamed answer, as it arrives."""
    for line in iter(resp.readline, b""):
        if line.startswith(b"data: "):
            yield line.removeprefix(b"data: ").strip().decode()


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(model):
    """`fewstep serve` in a subprocess: SIGTERM while a (streamed) request decodes; the request
    still gets its whole answer, then the server exits."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fewstep.cli", "serve", "--port", str(port), "--log-level",
                             "info", "--max-tokens", "160"], env=env, stderr=subprocess.PIPE, text=True)
    log = _Log(proc.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        assert log.wait_for("Uvicorn running on", timeout=120), "fewstep serve did not start:\n" + log.text()
        body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[0] + " A:", "max_tokens": 160,
                "settings": {"steps": 160}, "stream": True, "canvas": True, "stream_options": {"include_usage": True}}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        events = _sse_events(resp)
        first = json.loads(next(events))  # a step of the decode: the request is in flight
        assert None in first["fewstep"]["tokens"]
        proc.send_signal(signal.SIGTERM)
        rest = list(events)
        conn.close()
        assert rest[-1] == "[DONE]"
        last = [json.loads(e) for e in rest[:-1]]
        assert last[-1]["usage"]["nfe"] == 160 and last[-2]["fewstep"]["done"]
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it handled
        assert "Traceback" not in log.text()
        with pytest.raises(OSError):
            _post(base, "/v1/completions", body, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the playground in a real headless browser ----------------------------------------------------------------------

def _browser() -> str | None:
    """A Chromium executable: $FEWSTEP_CHROMIUM, the system's, or Playwright's own download."""
    import shutil

    for path in (os.environ.get("FEWSTEP_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if path and Path(path).exists():
            return path
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if Path(path).exists() else None
    except Exception:
        return None


def test_playground_in_a_browser(live, tmp_path):
    """The page loads, a prompt is submitted, the final text equals the API's answer; then two
    strategies side by side. The screenshot goes to tmp_path (and to docs/img/playground.png with
    FEWSTEP_UPDATE_SCREENSHOT=1)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    chromium = _browser()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or python -m playwright install chromium)")
    base, _ = live
    q = QUESTIONS[5]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#strategy-a option').length > 1")
            page.fill("#prompt", q)
            page.fill("#max-tokens", "24")
            page.select_option("#strategy-a", "llada")
            page.click("#run")
            page.wait_for_function("document.getElementById('status-a').textContent === 'done'", timeout=60000)
            body = {"model": "tiny-dlm", "max_tokens": 24, "messages": [{"role": "user", "content": q}]}
            status, api = _post(base, "/v1/chat/completions", {**body, "strategy": "llada"})
            assert status == 200 and api["choices"][0]["message"]["content"]
            assert page.inner_text("#final-a") == api["choices"][0]["message"]["content"]
            assert page.locator("#canvas-a .tok").count() == 24 and page.locator("#canvas-a .mask").count() == 0
            assert f"NFE {api['usage']['nfe']} " in page.inner_text("#stats-a")
            page.select_option("#strategy-b", "cad")
            page.fill("#params-b input[data-param=tau]", "0.8")
            page.click("#compare")
            page.wait_for_function("['a', 'b'].every(s => document.getElementById('status-' + s).textContent === "
                                   "'done')", timeout=60000)
            status, api_b = _post(base, "/v1/chat/completions", {**body, "strategy": "cad", "settings": {"tau": 0.8}})
            assert page.inner_text("#final-b") == api_b["choices"][0]["message"]["content"]
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("FEWSTEP_UPDATE_SCREENSHOT") == "1":
                page.screenshot(path=str(ROOT / "docs" / "img" / "playground.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.slow
def test_warm_start_request_equals_generate_and_streams_provisional_tokens(client, model):
    """A request with a drafter (warm start): the answer equals fewstep.generate's; the stream's
    canvas shows the injected draft as provisional tokens and the text comes in one delta at the end."""
    q = QUESTIONS[4]
    settings = {"drafter": "tiny-ar", "init": "inject", "remask_threshold": 0.5, "confirm_threshold": 0.5}
    ref = _generate(model, q, "threshold", [f"{k}={v}" for k, v in settings.items()])
    body = {"model": "tiny-dlm", "messages": [{"role": "user", "content": q}], "strategy": "threshold",
            "settings": settings}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["message"]["content"] == ref.text
    usage = out["usage"]
    assert (usage["nfe"], usage["drafter_nfe"], usage["injected"], usage["confirmed"], usage["revoked"]) == \
        (ref.nfe, ref.drafter_nfe, ref.injected, ref.confirmed, ref.revoked)
    chunks = _sse(client.post("/v1/chat/completions", json={**body, "stream": True, "canvas": True}).text)
    steps = [c["fewstep"] for c in chunks if "fewstep" in c and not c["fewstep"].get("done")]
    assert len(steps[0]["injected"]) == ref.injected > 0  # the positions the draft started
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert [d for d in deltas if d] == [ref.text]


def test_a_batch_waits_while_requests_keep_coming(model, monkeypatch):
    """A batch closes when no row has joined for max_wait, or its oldest row has waited 10 x max_wait.

    On a fake clock: time passes only while the engine waits on its condition, and requests
    arrive then, at their scheduled times (all binary fractions: the arithmetic is exact)."""
    from fewstep.serve import batcher

    cfg = resolve_config(model, None, [])
    now = [100.0]
    monkeypatch.setattr(batcher, "time", SimpleNamespace(monotonic=lambda: now[0]))
    b = batcher.Batcher(model, max_batch_size=16, max_wait_s=1.0)
    jobs: list[Job] = []
    arrivals = [100.75, 101.5]  # when the next requests arrive
    waits: list[float] = []  # how long the engine chose to wait, each time it did

    def arrive() -> None:  # a request arrives: its Job is made and queued
        jobs.append(Job([3], None, cfg, "k", lambda x: None, enqueued=now[0]))
        b.submit(jobs[-1:])

    def wait(timeout: float | None = None) -> bool:  # the engine sleeps until woken or timed out
        assert timeout is not None, "the engine waits without a timeout while a row is queued"
        waits.append(timeout)
        if arrivals and arrivals[0] <= now[0] + timeout:
            now[0] = arrivals.pop(0)
            arrive()  # (the condition's lock is re-entrant: submit notifies it)
        else:
            now[0] += timeout
        return True

    monkeypatch.setattr(b._cv, "wait", wait)
    arrive()
    assert b._take() == jobs and len(jobs) == 3  # each came within max_wait of the last, the third 1.5 s after the 1st
    assert waits == [1.0, 1.0, 1.0] and now[0] == 102.5  # every arrival restarted the wait; closed max_wait after
    span = (batcher.WAIT_CAP + 0.5) * b.max_wait_s
    old = [Job([3], None, cfg, "k", lambda x: None, enqueued=now[0] - span + span * i / 12) for i in range(13)]
    assert old[-1].enqueued == now[0]  # the newest has just come: not quiet yet
    b.submit(old)  # every row within max_wait of the previous, but the oldest is past the cap: taken at once
    waits.clear()
    assert b._take() == old and waits == []


def test_streamed_text_waits_when_committed_tokens_can_change():
    from fewstep.config import DecodeConfig
    from fewstep.serve.requests import committed_is_final

    assert committed_is_final(DecodeConfig(strategy="threshold"))
    assert committed_is_final(DecodeConfig(strategy="block_threshold"))  # no editing
    assert not committed_is_final(DecodeConfig(strategy="block_threshold", editing_threshold=0.9))
    assert not committed_is_final(DecodeConfig(strategy="block_threshold", editing_threshold=0.9, max_edits=1,
                                               revise_threshold=0.5))
    assert committed_is_final(DecodeConfig(strategy="block_threshold", editing_threshold=0.9, max_edits=0))
    assert not committed_is_final(DecodeConfig(revise_threshold=0.5))
