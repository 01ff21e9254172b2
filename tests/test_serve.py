"""fewstep serve over its API: OpenAI-compatible endpoints, streaming, limits and bad input.

Answers are checked against ``fewstep.generate`` with the configuration ``fewstep generate``
would build (:func:`fewstep.config.resolve_config`), on the bundled tiny-dlm. The batcher is
tested in test_serve_batching.py, a real server (uvicorn, a subprocess, a browser) in test_serve_live.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from fewstep.serve.app import create_app
from fewstep.serve.batcher import Job
from fewstep.serve.requests import Limits, ServerConfig
from fewstep.serve.stream import TextStream, cut_at_stop, hold_back
from serve_helpers import LIMITS, QUESTIONS, ROOT, generate, sse, streamed_text


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(limits=LIMITS), max_wait_ms=1)) as c:
        yield c


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
        ref = generate(model, q, strategy, cli)
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
    ref = generate(model, ids, "cad", [])
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": text, "strategy": "cad"}).json()
    assert r["choices"][0]["text"] == ref.text and r["usage"]["nfe"] == ref.nfe
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": ids, "strategy": "cad"}).json()
    assert r["choices"][0]["text"] == ref.text
    texts = ["Q: " + q + " A:" for q in QUESTIONS[:3]]
    r = client.post("/v1/completions", json={"model": "tiny-dlm", "prompt": texts, "strategy": "cad"}).json()
    refs = [generate(model, list(model.tokenizer.encode(t)), "cad", []) for t in texts]
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
        chunks = sse(client.post(path, json={**body, "stream": True, "canvas": True,
                                              "stream_options": {"include_usage": True}}).text)
        assert streamed_text(chunks, chat) == answer
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
    chunks = sse(client.post("/v1/chat/completions", json=body).text)
    with_text = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(with_text) >= 3 and not with_text[0].get("fewstep", {}).get("done")


def test_stream_holds_text_when_commits_can_be_revoked(client, model):
    body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[1] + " A:", "stream": True,
            "settings": {"revise_threshold": 0.3}}
    chunks = sse(client.post("/v1/completions", json=body).text)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert [t for t in texts if t] == [texts[-1]] and texts[-1]  # one delta: the whole answer, at the end


def test_stop_strings(client):
    body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[1] + " A:", "stop": ["=", "####"]}
    whole = client.post("/v1/completions", json={**body, "stop": None}).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json=body).json()["choices"][0]
    assert "=" in whole and r["text"] == whole[: whole.index("=")] and r["finish_reason"] == "stop"
    chunks = sse(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert streamed_text(chunks, False) == r["text"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"


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
    chunks = sse(c.post("/v1/completions", json={**OK, "stream": True}, headers=auth).text)
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



# --- warm start (a drafter) ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_warm_start_request_equals_generate_and_streams_provisional_tokens(client, model):
    """A request with a drafter (warm start): the answer equals fewstep.generate's; the stream's
    canvas shows the injected draft as provisional tokens and the text comes in one delta at the end."""
    q = QUESTIONS[4]
    settings = {"drafter": "tiny-ar", "init": "inject", "remask_threshold": 0.5, "confirm_threshold": 0.5}
    ref = generate(model, q, "threshold", [f"{k}={v}" for k, v in settings.items()])
    body = {"model": "tiny-dlm", "messages": [{"role": "user", "content": q}], "strategy": "threshold",
            "settings": settings}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["message"]["content"] == ref.text
    usage = out["usage"]
    assert (usage["nfe"], usage["drafter_nfe"], usage["injected"], usage["confirmed"], usage["revoked"]) == \
        (ref.nfe, ref.drafter_nfe, ref.injected, ref.confirmed, ref.revoked)
    chunks = sse(client.post("/v1/chat/completions", json={**body, "stream": True, "canvas": True}).text)
    steps = [c["fewstep"] for c in chunks if "fewstep" in c and not c["fewstep"].get("done")]
    assert len(steps[0]["injected"]) == ref.injected > 0  # the positions the draft started
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert [d for d in deltas if d] == [ref.text]



# --- when streamed text may be sent before the end -----------------------------------------------------------------

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
