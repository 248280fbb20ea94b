"""Prometheus metrics, in a registry per app so that several apps in one process (tests) do not
collide, in two vocabularies:

- NVIDIA Triton's (`nv_*`, labels `model` and `version`), so that Triton's dashboards, alerts and
  tools read this server unchanged. The per-model families follow the statistics extension
  (service/models/statistics.py): `ModelStats` updates them at the very points where it counts,
  so /metrics and `GET /v2/models/stats` agree to the request (`attach` binds them when a version
  starts; `detach` removes them when it is unloaded, as Triton does).
- This service's own (`coordconv_*`, the README's Metrics section): per route and protocol
  request counts and latency histograms, and the queue, compute and batch size histograms.

Triton's cumulative families are counters without the `_total` suffix that prometheus_client
gives counters; they are kept as gauges (which have no suffix, and in multiprocess mode `sum`
every worker's file, dead ones included, as counters do) and declared `counter` in the text.

With `--workers N`, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the
supervisor) keeps each worker's values in a file and `exposition` sums them, so /metrics says the
same whichever worker answers. CPU and GPU gauges (service/metrics/system.py) are read at scrape
time; traces are service/metrics/tracing.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.errors import ClientClosedRequest, InferenceFailed
from service.metrics import tracing
from service.metrics.system import SystemCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Triton's defaults for this histogram are 100, 500, 2000 and 5000 ms (for language models); the
# same edges, with finer ones below for models that answer in milliseconds.
FIRST_RESPONSE_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Triton's `reason` label of nv_inference_request_failure.
REJECTED, CANCELED, BACKEND, OTHER = "REJECTED", "CANCELED", "BACKEND", "OTHER"
FAILURE_REASONS = (REJECTED, CANCELED, BACKEND, OTHER)
# ModelStats duration -> (its count's family, its microseconds' family), Triton's names.
DURATIONS: dict[str, tuple[str | None, str | None]] = {
    "success": ("nv_inference_request_success", "nv_inference_request_duration_us"),
    "queue": (None, "nv_inference_queue_duration_us"),
    "compute_input": (None, "nv_inference_compute_input_duration_us"),
    "compute_infer": (None, "nv_inference_compute_infer_duration_us"),
    "compute_output": (None, "nv_inference_compute_output_duration_us"),
    "cache_hit": ("nv_cache_num_hits_per_model", "nv_cache_hit_duration_per_model"),
    "cache_miss": ("nv_cache_num_misses_per_model", "nv_cache_miss_duration_per_model"),
}
HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached "
    "requests)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds "
    "(includes cached requests)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds "
    "(includes cached requests)",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration in microseconds "
    "(does not include cached requests)",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in "
    "microseconds (does not include cached requests)",
    "nv_inference_compute_output_duration_us": "Cumulative inference compute output duration in "
    "microseconds (does not include cached requests)",
    "nv_cache_num_hits_per_model": "Number of cache hits per model",
    "nv_cache_num_misses_per_model": "Number of cache misses per model",
    "nv_cache_hit_duration_per_model": "Total cache hit duration per model, in microseconds",
    "nv_cache_miss_duration_per_model": "Total cache miss (insert + lookup) duration per model, "
    "in microseconds",
}
# Families declared `counter` in the text although kept as gauges (see the docstring).
TRITON_COUNTERS = (*HELP, "nv_energy_consumption")
E = TypeVar("E", bound=BaseException)


class Statistics(Protocol):
    """What `attach` reads of a version's statistics (service.models.statistics.ModelStats)."""

    name: str
    version: str
    series: VersionSeries | None
    inference_count: int
    execution_count: int


def failure_reason(error: BaseException | None) -> str:
    """Triton's reason for a failed request: REJECTED (the queue was full, or the request waited
    past its queue timeout), CANCELED (the client went away), BACKEND (onnxruntime failed), OTHER
    (bad input, unloading, shutting down). The batcher tags what it refuses (`failure_reason`)."""
    tagged = getattr(error, "failure_reason", None)
    if isinstance(tagged, str):
        return tagged
    if isinstance(error, asyncio.CancelledError | ClientClosedRequest):
        return CANCELED
    if isinstance(error, InferenceFailed):
        return BACKEND
    return OTHER


def tag(error: E, reason: str) -> E:
    """`error` with its failure reason for nv_inference_request_failure."""
    error.failure_reason = reason  # type: ignore[attr-defined]
    return error


class VersionSeries:
    """One model version's series, their label children bound once (labels() costs microseconds
    per call). `ModelStats` drives them."""

    def __init__(self, m: Metrics, name: str, version: str) -> None:
        self.key = (name, version)
        self.durations = {
            field: (
                None if count is None else m.triton[count].labels(name, version),
                None if micros is None else m.triton[micros].labels(name, version),
            )
            for field, (count, micros) in DURATIONS.items()
        }
        self.failures = {r: m.request_failure.labels(name, version, r) for r in FAILURE_REASONS}
        self.inferences = m.triton["nv_inference_count"].labels(name, version)
        self.executions = m.triton["nv_inference_exec_count"].labels(name, version)
        self.pending = m.pending.labels(name, version)
        self.first_response = m.first_response.labels(name, version)
        # This service's own, counted at the same points.
        self.items = m.inference_count.labels(name, version)
        self.calls = m.execution_count.labels(name, version)
        self.batch_size = m.batch_size.labels(name, version)
        self.compute = m.compute_duration.labels(name, version)

    def gauges(self) -> list[Any]:
        """Every gauge-kept child (Triton's counters and the pending gauge)."""
        durations = [c for pair in self.durations.values() for c in pair if c is not None]
        return [*durations, *self.failures.values(), self.inferences, self.executions, self.pending]

    def request_done(self, ok: bool, ns: int, error: BaseException | None) -> None:
        """A request answered (success and its duration come from the `success` Duration)."""
        if ok:
            self.first_response.observe(ns / 1e6)
        else:
            self.failures[failure_reason(error)].inc()

    def execution(self, items: int, infer_ns: int | None) -> None:
        """One onnxruntime call of `items` rows (the compute phases come from their Durations),
        or an ensemble's run (`infer_ns` None)."""
        self.inferences.inc(items)
        self.executions.inc()
        self.items.inc(items)
        self.calls.inc()
        if infer_ns is not None:
            self.batch_size.observe(items)
            self.compute.observe(infer_ns / 1e9)


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
        # Triton's (NVIDIA Triton's docs/user_guide/metrics.md).
        self.triton = {
            name: Gauge(name, doc, ["model", "version"], registry=r, multiprocess_mode="sum")
            for name, doc in HELP.items()
            if name != "nv_inference_request_failure"
        }
        self.request_failure = Gauge(
            "nv_inference_request_failure",
            HELP["nv_inference_request_failure"],
            ["model", "version", "reason"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.first_response = Histogram(
            "nv_inference_first_response_histogram_ms",
            "Duration from request to first response in milliseconds",
            ["model", "version"],
            buckets=FIRST_RESPONSE_BUCKETS_MS,
            registry=r,
        )
        self.system = SystemCollector()
        r.register(self.system)
        self._series: dict[tuple[str, str], VersionSeries] = {}
        self._bound: dict[tuple[str, str], Statistics] = {}
        # Triton's per-version families, by name: with `--workers N` their samples are shown
        # only for versions served now (`exposition`).
        self._per_version = {
            *self.triton,
            self.request_failure._name,
            self.pending._name,
            self.first_response._name,
        }
        tracing.ensure()  # once per process, from the OTEL_* variables

    def attach(self, stats: Statistics) -> VersionSeries:
        """From now on the (model, version) series follow `stats`, starting from its counts: a
        version that replaces another (a reload) restarts them, as the statistics restart (with
        `--workers N` the latency histogram goes on from where it was)."""
        key = (stats.name, stats.version)
        previous = self._bound.get(key)
        if previous is not None and previous is not stats:
            self.detach(previous)  # its series go; fresh ones follow the new statistics
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = VersionSeries(self, *key)
        self._bound[key] = stats
        stats.series = series
        for field, (count, micros) in series.durations.items():
            d = getattr(stats, field, None)
            if d is None:
                continue
            d.count_series, d.us_series = count, micros
            if count is not None:
                count.set(d.count)
            if micros is not None:
                micros.set(d.ns / 1000)
        fail = getattr(stats, "fail", None)
        for reason, child in series.failures.items():
            child.set(fail.count if fail is not None and reason == OTHER else 0)
        series.inferences.set(stats.inference_count)
        series.executions.set(stats.execution_count)
        series.pending.set(0)
        return series

    def detach(self, stats: Statistics) -> None:
        """The version is gone (unloaded, or the server stops): its Triton series go too, as in
        Triton, unless another version has taken them over. With `--workers N` a value cannot be
        taken out of a worker's file: it turns 0 there instead."""
        _unmirror(stats)
        key = (stats.name, stats.version)
        if self._bound.get(key) is not stats:
            return
        del self._bound[key]
        series = self._series.pop(key)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            for child in series.gauges():
                child.set(0)
            return
        for family in (*self.triton.values(), self.pending, self.first_response):
            with contextlib.suppress(KeyError):
                family.remove(*key)
        for reason in FAILURE_REASONS:
            with contextlib.suppress(KeyError):
                self.request_failure.remove(*key, reason)

    def exposition(self) -> bytes:
        """The text format: this registry, or every worker's values with `--workers N`."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            text = generate_latest(self.registry)
        else:
            registry = CollectorRegistry()
            registry.register(_ServedOnly(MultiProcessCollector(None, shared), self))
            registry.register(self.system)
            text = generate_latest(registry)
        for name in TRITON_COUNTERS:
            text = text.replace(
                b"# TYPE %s gauge\n" % name.encode(), b"# TYPE %s counter\n" % name.encode()
            )
        return text


class _ServedOnly:
    """Every worker's values (prometheus_client's multiprocess files), with Triton's per-version
    samples left out for versions no longer served: a value cannot be taken out of a worker's
    file, so an unloaded version's series would stay (at 0) where one process removes them."""

    def __init__(self, inner: MultiProcessCollector, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        served = set(self.metrics._bound)
        for family in self.inner.collect():
            if family.name in self.metrics._per_version:
                family.samples = [
                    s
                    for s in family.samples
                    if (s.labels.get("model"), s.labels.get("version")) in served
                ]
            yield family


def _unmirror(stats: Any) -> None:
    stats.series = None
    for field in DURATIONS:
        d = getattr(stats, field, None)
        if d is not None:
            d.count_series = d.us_series = None
