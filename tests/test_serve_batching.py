"""fewstep serve's batcher: concurrent requests share batches and each answer equals the request
decoded alone; rows finish and are cancelled one by one; when a batch closes (on a fake clock)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

import fewstep
from fewstep.config import resolve_config
from fewstep.serve.batcher import Job, RowDone, RowUpdate
from fewstep.serve.requests import batch_key
from serve_helpers import QUESTIONS, generate, post, streamed_text

# --- batching -----------------------------------------------------------------------------------------------------

MIXED = [  # strategy, settings, --set list of fewstep generate
    ("llada", {"steps": 8}, ["gen_length=16", "block_length=16", "steps=8"]),
    ("cad", {"tau": 0.9}, ["gen_length=16", "block_length=16", "tau=0.9"]),
    ("threshold", {"threshold": 0.8, "block_length": 8, "early_stop": True},
     ["gen_length=16", "block_length=8", "threshold=0.8", "early_stop=true"]),
    ("llada", {"steps": 16, "temperature": 0.8, "seed": 3},
     ["gen_length=16", "block_length=16", "steps=16", "temperature=0.8", "seed=3"]),
]


@pytest.mark.slow
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
        answers = list(pool.map(lambda j: post(base, "/v1/chat/completions" if j[1] else "/v1/completions", j[0]),
                                jobs))
    assert [status for status, _ in answers] == [200] * 64
    sizes, refs = [], {}
    for (body, chat, prompt, strategy, cli), (_, out) in zip(jobs, answers):
        key = (str(prompt), strategy, tuple(cli))
        ref = refs[key] = refs.get(key) or generate(model, prompt, strategy, cli)
        if body["stream"]:
            assert streamed_text(out, chat) == ref.text
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


# --- when a batch closes -------------------------------------------------------------------------------------------

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
