"""Prometheus metrics of ``xelm serve``: one registry per server, so servers in one process
(tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("xelm_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("xelm_request_latency_seconds", "time from request to answer", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("xelm_requests_in_flight", "requests being answered", registry=r)
        self.queue_depth = Gauge("xelm_queue_depth", "requests waiting for the engine", registry=r)
        self.batch_requests = Histogram("xelm_batch_requests", "requests per engine batch",
                                        buckets=COUNT_BUCKETS, registry=r)
        self.batch_texts = Histogram("xelm_batch_texts", "texts per engine batch", buckets=COUNT_BUCKETS, registry=r)
        self.batch_tokens = Histogram("xelm_batch_tokens", "tokens per engine batch", buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("xelm_batch_seconds", "engine time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.expert_texts = Counter("xelm_expert_texts", "texts routed to each expert (weight > 0)", ["expert"],
                                    registry=r)
        self.experts = Gauge("xelm_experts", "experts in the registry as served", registry=r)
        self.reloads = Counter("xelm_registry_reloads", "registry changes picked up while serving", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
