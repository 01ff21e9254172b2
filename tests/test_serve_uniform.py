"""fewstep serve with a uniform-state model (DiffusionGemma, tiny random weights): every answer equals
``fewstep.generate`` with the configuration the server resolves (a completion's prompt is encoded as
it is, a chat message through the chat template, as ``fewstep generate`` does), alone and in a batch,
streamed and not; a stream's canvas shows the undecided tokens; the strategy list holds the
strategies of the model's kind; a causal model is refused in one line."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import fewstep
from dgemma_helpers import make_tiny_dgemma
from fewstep.config import resolve_config
from fewstep.serve.app import create_app
from fewstep.serve.requests import ServerConfig, batch_key
from serve_helpers import LIMITS, sse, streamed_text

PROMPTS = ["hello", "what is 3 plus 4", "how many pens", "2 times 9 is"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = make_tiny_dgemma(tmp_path_factory.mktemp("dg") / "dgemma")
    model = fewstep.load_model(path)
    with TestClient(create_app(model, ServerConfig(limits=LIMITS), max_wait_ms=1)) as c:
        yield model, c


def alone(model, prompt, max_tokens: int, settings: dict):
    """``fewstep.generate`` on one prompt (text: through the chat template; token ids as they are)."""
    cfg = resolve_config(model, None, [], gen_length=max_tokens, request=settings)
    return fewstep.generate(model, [prompt], cfg)[0]


def test_a_uniform_state_model_is_served_as_generate_answers(served):
    model, client = served
    r = client.post("/v1/completions", json={"model": model.name, "prompt": "hello", "max_tokens": 8,
                                             "seed": 3})
    assert r.status_code == 200, r.text
    want = alone(model, list(model.tokenizer.encode("hello")), 8, {"seed": 3})
    assert r.json()["choices"][0]["text"] == want.text
    assert r.json()["usage"]["nfe"] == want.nfe
    chat = client.post("/v1/chat/completions", json={"model": model.name, "max_tokens": 8, "seed": 3,
                                                      "messages": [{"role": "user", "content": "hello"}]})
    assert chat.json()["choices"][0]["message"]["content"] == alone(model, "hello", 8, {"seed": 3}).text
    names = {s["name"] for s in client.get("/v1/strategies").json()["strategies"]}
    assert names == {"uniform_eb"}


@pytest.mark.parametrize(("sample", "seed"), [(False, 6), (True, 0)])
def test_rows_of_one_request_each_equal_generate_alone(served, sample, seed):
    """Four prompts of one request, some ending (EOS) a block or two before the others: at
    ``sample=false`` they share a batch; sampling rows are decoded alone."""
    model, client = served
    settings = {"seed": seed, "sample": sample}
    r = client.post("/v1/completions", json={"model": model.name, "prompt": PROMPTS, "max_tokens": 24,
                                             "settings": settings})
    assert r.status_code == 200, r.text
    wants = [alone(model, list(model.tokenizer.encode(p)), 24, settings) for p in PROMPTS]
    assert [c["text"] for c in r.json()["choices"]] == [w.text for w in wants]
    assert r.json()["usage"]["nfe"] == sum(w.nfe for w in wants) and len({w.nfe for w in wants}) > 1
    assert r.json()["fewstep"]["batch_size"] == ([1] * 4 if sample else [4] * 4)


def test_batch_key_decodes_sampling_uniform_requests_alone(served):
    model, _ = served
    sampled = resolve_config(model, None, [], request={"seed": 3})
    argmax = resolve_config(model, None, [], request={"seed": 3, "sample": False})
    assert batch_key(sampled, 1) != batch_key(sampled, 2)
    assert batch_key(argmax, 1) == batch_key(argmax, 2) == argmax


@pytest.mark.parametrize("sample", [False, True])
def test_a_uniform_state_model_streams(served, sample):
    model, client = served
    body = {"model": model.name, "prompt": "hello", "max_tokens": 24, "settings": {"seed": 3, "sample": sample}}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True, "canvas": True})
    assert r.status_code == 200
    chunks = sse(r.text)
    assert streamed_text(chunks, chat=False) == full
    canvases = [c["fewstep"] for c in chunks if isinstance(c, dict) and "fewstep" in c]
    first = canvases[0]  # the first block's undecided tokens are tokens, the later blocks wait (None)
    assert all(t is not None for t in first["tokens"][:8]) and first["state"][:8] == [0] * 8
    assert all(t is None for t in first["tokens"][8:])
    assert canvases[-1]["done"] and canvases[-1]["state"] == [2] * 24


def test_serve_refuses_a_causal_model_in_one_line(capsys, bundled):
    from fewstep.cli import main

    assert main(["serve", "--model", str(bundled("tiny-ar"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep: error: fewstep serve needs a diffusion model") and err.count("\n") == 1
