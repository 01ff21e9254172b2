"""The engine thread: queued rows grouped into batches and decoded through the one decode loop.

Each request row is a :class:`Job`. Rows wait in a FIFO queue; the engine takes the oldest row and
every queued row with the same batch key (:func:`fewstep.serve.requests.batch_key`: the same
DecodeConfig, at temperature 0), up to ``max_batch_size``, once that many are waiting, or no row of
that key has arrived for ``max_wait_s``, or the oldest has waited ``WAIT_CAP x max_wait_s``. Rows that
arrive while a batch decodes wait for the next one.
The batch runs through the engine (:func:`fewstep.engine.stream`: warm start where the
configuration has a drafter, then the decode loop, as :func:`fewstep.generate`); at every step

- a row with no undecided position left (all of it committed: early stop on EOS, or the end)
  is reported at once as a :class:`RowDone` (its :class:`~fewstep.GenerationResult` read by
  :meth:`fewstep.engine.Update.results`, exactly as ``fewstep.generate`` reads it);
- a watched row (a stream) gets a :class:`RowUpdate` with its canvas;
- once every row is reported or cancelled (its client went away or timed out) the decode stops.

A cancelled row inside a running batch keeps its place until the batch ends (the loop decodes
the batch's rows together); it is no longer reported, and a cancelled row still queued is dropped.
Deliveries are callbacks made on the engine thread (the app hands them to its event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

from fewstep.config import DecodeConfig
from fewstep.serve.metrics import Metrics

log = logging.getLogger("fewstep.serve")


@dataclass(eq=False)
class Job:
    """One prompt of a request, waiting for or inside a batch."""

    ids: list[int]  # prompt token ids
    text: str | None  # prompt text (a drafter needs it)
    cfg: DecodeConfig
    key: Hashable  # batch_key(cfg, ...)
    deliver: Callable[[Any], None]  # called on the engine thread with RowUpdate, RowDone or an exception
    watch: bool = False  # send a RowUpdate at every step
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False


@dataclass(frozen=True)
class RowUpdate:
    step: int
    nfe: int
    canvas: list[int]  # [G] token ids, mask id where masked
    state: list[int]  # [G] canvas.MASKED / PROVISIONAL / COMMITTED
    committed_at: list[int]  # [G] step of each commit (-1: not yet)
    revoked: list[int]  # positions sent back to mask at this step
    settled: int  # length of the committed prefix
    injected: list[int]  # positions that started as provisional draft tokens (warm starts)


@dataclass(frozen=True)
class RowDone:
    result: Any  # GenerationResult
    step: int
    batch_size: int
    queue_s: float


WAIT_CAP = 10  # the oldest queued row waits at most WAIT_CAP x max_wait for its batch to fill


class QueueFull(Exception):
    def __init__(self, retry_after: float):
        super().__init__("the queue is full")
        self.retry_after = retry_after


class Batcher:
    def __init__(self, model, max_batch_size: int = 32, max_wait_s: float = 0.01, max_queue: int = 256,
                 metrics: Metrics | None = None):
        self.model, self.max_batch_size, self.max_wait_s, self.max_queue = model, max_batch_size, max_wait_s, max_queue
        self.metrics = metrics or Metrics()
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._batch_s = 0.0  # wall time of the last batch (for Retry-After)
        self._thread = threading.Thread(target=self._run, name="fewstep-engine", daemon=True)
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Decode what is queued, then end the engine thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, jobs: list[Job]) -> None:
        """Queue a request's rows, all or none (QueueFull with a Retry-After estimate)."""
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is stopping")
            self._drop_cancelled()
            if len(self._pending) + len(jobs) > self.max_queue:
                waves = -(-(len(self._pending) + len(jobs)) // self.max_batch_size)
                raise QueueFull(max(1.0, waves * self._batch_s))
            self._pending.extend(jobs)
            self.metrics.queue_depth.set(len(self._pending))
            self._cv.notify_all()

    def wake(self) -> None:
        """A row was cancelled: let the engine drop it from the queue."""
        with self._cv:
            self._cv.notify_all()

    def _drop_cancelled(self) -> None:
        """Forget queued rows whose client has gone (the lock is held)."""
        if any(j.cancelled for j in self._pending):
            self._pending = deque(j for j in self._pending if not j.cancelled)
            self.metrics.queue_depth.set(len(self._pending))

    def _take(self) -> list[Job] | None:
        """The next batch (None: stopping with nothing queued)."""
        with self._cv:
            while True:
                self._drop_cancelled()
                if not self._pending:
                    if self._stopping:
                        return None
                    self._cv.wait()
                    continue
                first = self._pending[0]
                same = [j for j in self._pending if j.key == first.key][: self.max_batch_size]
                # close when full, or when no row of this key has come for max_wait (a burst of clients
                # answered by the last batch comes back spread out), or the oldest has waited 10 x max_wait
                close = min(same[-1].enqueued + self.max_wait_s, first.enqueued + WAIT_CAP * self.max_wait_s)
                wait = close - time.monotonic()
                if len(same) >= self.max_batch_size or wait <= 0 or self._stopping:
                    taken = set(map(id, same))
                    self._pending = deque(j for j in self._pending if id(j) not in taken)
                    self.metrics.queue_depth.set(len(self._pending))
                    return same
                self._cv.wait(wait)

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                self._decode(jobs)
            except Exception as e:  # an engine failure answers its rows; the server goes on
                log.exception("decoding a batch of %d failed", len(jobs))
                for j in jobs:
                    j.deliver(e)

    def _decode(self, jobs: list[Job]) -> None:
        import torch

        from fewstep.decoding.canvas import COMMITTED
        from fewstep.engine import stream

        m, n, cfg, t0 = self.metrics, len(jobs), jobs[0].cfg, time.monotonic()
        m.batch_size.observe(n)
        m.active_rows.set(n)
        for j in jobs:
            m.queue_seconds.observe(t0 - j.enqueued)
        watch = torch.tensor([j.watch for j in jobs])  # [B]
        open_ = torch.ones(n, dtype=torch.bool)  # [B] rows not reported yet
        texts = [j.text or "" for j in jobs] if cfg.drafter else None  # a drafter reads text
        updates = cast(Generator, stream(self.model, [j.ids for j in jobs], cfg, texts=texts))
        try:
            for up in updates:
                ev = up.event
                assert ev is not None and ev.state is not None
                undecided = ev.state != COMMITTED  # [B, G]
                finished = open_ & ~undecided.any(1)  # [B]
                if finished.any():
                    self._deliver_done(jobs, up, finished, n, t0)
                    open_ &= ~finished
                cancelled = torch.tensor([j.cancelled for j in jobs])  # [B]
                live = open_ & ~cancelled
                if not live.any():
                    break  # every row is reported or its client has gone
                if (live & watch).any():
                    injected = up.injected()
                    self._updates(jobs, ev, undecided, live & watch, None if injected is None else injected >= 0)
        finally:
            updates.close()
        self._batch_s = time.monotonic() - t0
        m.batch_seconds.observe(self._batch_s)
        m.active_rows.set(0)
        self.batches += 1

    def _deliver_done(self, jobs: list[Job], up, finished, n: int, t0: float) -> None:
        """A RowDone for each row of ``finished`` [B] bool, with its own result."""
        m = self.metrics
        idx = finished.nonzero().squeeze(1)
        for i, r in zip(idx.tolist(), up.results(idx)):  # per finished row: its own reply
            m.rows.inc()
            m.nfe.inc(r.nfe)
            m.completion_tokens.inc(r.answer_tokens)
            m.prompt_tokens.inc(len(jobs[i].ids))
            jobs[i].deliver(RowDone(r, up.event.step, n, t0 - jobs[i].enqueued))

    @staticmethod
    def _updates(jobs: list[Job], ev, undecided, rows, injected) -> None:
        """A RowUpdate for each watched live row (``rows`` [B] bool; ``injected`` [B, G] or None)."""
        g = undecided.shape[1]
        settled = (undecided.int().argmax(1)).masked_fill(~undecided.any(1), g)  # [B] first undecided position
        for i in rows.nonzero().squeeze(1).tolist():  # streams only: each needs its own row's lists
            drafted = [] if injected is None else injected[i].nonzero().squeeze(1).tolist()
            jobs[i].deliver(RowUpdate(ev.step, int(ev.nfe[i]), ev.canvas[i].tolist(), ev.state[i].tolist(),
                                      ev.committed_at[i].tolist(), ev.revoked[i].nonzero().squeeze(1).tolist(),
                                      int(settled[i]), drafted))

