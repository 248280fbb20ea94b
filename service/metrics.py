"""Prometheus metrics (names fixed by DESIGN.md section 6), in a registry per app so that several
apps in one process (tests) do not collide. With `--workers N`, prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor) keeps each worker's values in a file and
`exposition` sums them, so /metrics says the same whichever worker answers."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "coordconv_requests",
            "HTTP requests",
            ["route", "model", "version", "status", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            "coordconv_request_duration_seconds",
            "Request latency",
            ["route", "model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_count = Counter(
            "coordconv_inference_count", "Items inferred", ["model", "version"], registry=r
        )
        self.execution_count = Counter(
            "coordconv_execution_count", "onnxruntime calls", ["model", "version"], registry=r
        )
        self.batch_size = Histogram(
            "coordconv_batch_size",
            "Items per onnxruntime call",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "coordconv_queue_duration_seconds",
            "Time a request waits in the queue",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "coordconv_compute_duration_seconds",
            "onnxruntime call time",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_items = Gauge(
            "coordconv_queue_items",
            "Items waiting in the queue",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",  # the workers' queues together; a dead one's dropped
        )

    def exposition(self) -> bytes:
        """The text format: this registry, or every worker's values with `--workers N`."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)
        return generate_latest(registry)
