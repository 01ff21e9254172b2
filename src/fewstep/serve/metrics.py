"""Prometheus metrics of one server (a registry per application, so several can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fewstep_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("fewstep_prompt_tokens", "prompt tokens of finished rows", registry=r)
        self.completion_tokens = Counter("fewstep_completion_tokens", "answer tokens (up to EOS) of finished rows",
                                         registry=r)
        self.nfe = Counter("fewstep_nfe", "forward passes of the model, summed over finished rows", registry=r)
        self.rows = Counter("fewstep_rows", "rows decoded (one per prompt)", registry=r)
        self.queue_depth = Gauge("fewstep_queue_depth", "rows waiting for a batch", registry=r)
        self.active_rows = Gauge("fewstep_active_rows", "rows in the batch being decoded", registry=r)
        self.batch_size = Histogram("fewstep_batch_size", "rows per decoded batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fewstep_batch_seconds", "wall time of a batch's decode",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("fewstep_queue_seconds", "time a row waits for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("fewstep_request_seconds", "request latency (arrival to last byte)", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_delta = Histogram("fewstep_first_delta_seconds", "streamed requests: arrival to first text",
                                     buckets=LATENCY_BUCKETS, registry=r)
