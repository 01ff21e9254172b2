"""Answers in OpenAI's format: the JSON body of a completion and the server-sent events of a stream.

A streamed answer is a series of ``data: {chunk}`` events (text deltas, with the canvas in a
``fewstep`` field when asked), the last with its finish reason (then the usage when asked), ending
with ``data: [DONE]``; a timeout or an engine failure ends it early with an error object.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fewstep.serve.batcher import RowDone, RowUpdate
from fewstep.serve.metrics import Metrics
from fewstep.serve.requests import committed_is_final
from fewstep.serve.schemas import APIError
from fewstep.serve.state import InFlight, Server, engine_error
from fewstep.serve.stream import TextStream, cut_at_stop

DONE = "data: [DONE]\n\n"


def finish_reason(result, stopped: bool) -> str:
    return "stop" if stopped or result.answer_tokens < len(result.token_ids) else "length"


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def response_head(chat: bool, model_id: str) -> dict[str, Any]:
    """The fields every answer (and every chunk of a stream) starts with."""
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model_id}


# --- the whole answer at once ----------------------------------------------------------------------------------

def choices(dones: list[RowDone], stops: list[str], chat: bool) -> list[dict[str, Any]]:
    """One choice per row, its text cut at the first stop string."""
    out = []
    for i, d in enumerate(dones):
        text, stopped = cut_at_stop(d.result.text, stops)
        reason = finish_reason(d.result, stopped)
        if chat:
            out.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": reason})
        else:
            out.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    return out


def completion_body(srv: Server, call: InFlight, dones: list[RowDone]) -> dict[str, Any]:
    """The JSON answer of a request that is not streamed."""
    return {**call.head, "choices": choices(dones, call.body.stops, call.chat),
            "usage": srv.usage(call.prompt_tokens, dones),
            "fewstep": {"strategy": call.cfg.strategy, "batch_size": [d.batch_size for d in dones],
                        "queue_s": [round(d.queue_s, 4) for d in dones], "steps": [d.step + 1 for d in dones]}}


# --- a stream ------------------------------------------------------------------------------------------------------

class Chunks:
    """The chunks of one streamed answer (a chat stream names the assistant's role in its first delta)."""

    def __init__(self, head: dict[str, Any], chat: bool, metrics: Metrics, t0: float):
        self.head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        self.chat, self.metrics, self.t0 = chat, metrics, t0
        self.sent_role = self.seen_text = False

    def chunk(self, delta: str, reason: str | None = None, extra: dict[str, Any] | None = None) -> str:
        if self.chat:
            d: dict[str, Any] = {"content": delta}
            if not self.sent_role:
                d["role"], self.sent_role = "assistant", True
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
        if delta and not self.seen_text:
            self.metrics.first_delta.observe(time.monotonic() - self.t0)
            self.seen_text = True
        out = {**self.head, "choices": [choice]}
        if extra is not None:
            out["fewstep"] = extra
        return sse(out)

    def usage(self, usage: dict[str, Any]) -> str:
        return sse({**self.head, "choices": [], "usage": usage})


async def _next_delivery(srv: Server, call: InFlight) -> RowUpdate | RowDone | APIError:
    """What the engine delivers next for the (one) row, or the error that ends the stream."""
    try:
        _, item = await asyncio.wait_for(call.queue.get(), max(call.deadline - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        return srv.timeout_error()
    if isinstance(item, Exception):
        return engine_error(item)
    return item


def _update_chunk(srv: Server, call: InFlight, out: Chunks, text: TextStream, item: RowUpdate) -> str | None:
    """The chunk for a step of the decode (None: nothing new to send); ``text.stopped``: the last one."""
    delta = text.update(item.canvas[: item.settled])
    extra = srv.canvas(item.canvas, item.state, item.committed_at, item.revoked, item.step, item.nfe,
                       item.injected) if call.body.canvas else None
    if text.stopped:  # a stop string ended the answer: reply now, free the row
        return out.chunk(delta, "stop", extra)
    if delta or extra is not None:
        return out.chunk(delta, None, extra)
    return None


def _done_chunks(srv: Server, call: InFlight, out: Chunks, text: TextStream, item: RowDone) -> list[str]:
    """The last chunk (the rest of the text, the finish reason) and the usage chunk when asked."""
    r = item.result
    delta = text.finish(r.text)
    extra = None
    if call.body.canvas:
        extra = srv.canvas(r.token_ids, [2] * len(r.token_ids), r.committed_at, [], item.step, r.nfe, [])
        extra.update(done=True, usage=srv.usage(call.prompt_tokens, [item]), batch_size=item.batch_size)
    chunks = [out.chunk(delta, finish_reason(r, text.stopped), extra)]
    if call.body.include_usage:
        chunks.append(out.usage(srv.usage(call.prompt_tokens, [item])))
    return chunks


async def event_stream(srv: Server, call: InFlight) -> AsyncIterator[str]:
    """The events of a streamed request; at the end (or when the client leaves) its row is freed."""
    out = Chunks(call.head, call.chat, srv.metrics, call.t0)
    text = TextStream(srv.model, call.body.stops, final_only=not committed_is_final(call.cfg))
    status = 200
    try:
        if call.chat:
            yield out.chunk("")
        while True:
            item = await _next_delivery(srv, call)
            if isinstance(item, APIError):
                status = item.status
                yield sse(item.body())
                break
            if isinstance(item, RowUpdate):
                chunk = _update_chunk(srv, call, out, text, item)
                if chunk is not None:
                    yield chunk
                if text.stopped:
                    break
                continue
            assert isinstance(item, RowDone)
            for chunk in _done_chunks(srv, call, out, text, item):
                yield chunk
            break
        yield DONE
    finally:
        srv.cancel(call.jobs)
        srv.record(call.endpoint, status, call.t0)
