"""Per model version statistics in the shape of Triton's statistics extension, so that
`tritonclient`'s `get_inference_statistics` and `perf_analyzer`'s server-side breakdown read them.

Like Triton: `success` and `fail` count requests (nanoseconds from arrival to answer), `queue` is
each request's wait, and the compute phases of a batch are charged to every request in it;
`inference_count` counts items, `execution_count` onnxruntime calls, and `batch_stats` the
calls per batch size. `cache_hit` and `cache_miss` count response-cache look-ups per item (our
cache keys items, not whole requests); their nanoseconds are the look-up plus copying out on a
hit, the look-up plus insertion on a miss. As in Triton, items answered from the cache count in
`success` but not in `inference_count`, `execution_count`, `queue` or the compute phases.
Updated on the event loop only, so no lock is needed.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.metrics import VersionSeries


@dataclass
class Duration:
    count: int = 0
    ns: int = 0
    # The Prometheus children that follow it, its count and its microseconds (Triton's families:
    # service/metrics binds them when the version starts), so both count at the same point.
    count_series: Any = field(default=None, repr=False, compare=False)
    us_series: Any = field(default=None, repr=False, compare=False)

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns
        if self.count_series is not None:
            self.count_series.inc(count)
        if self.us_series is not None:
            self.us_series.inc(ns / 1000)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchPhases:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchPhases] = field(default_factory=lambda: defaultdict(BatchPhases))
    series: VersionSeries | None = field(default=None, repr=False, compare=False)  # /metrics

    def request_done(self, ok: bool, ns: int, error: BaseException | None = None) -> None:
        """A request answered or failed; a failure's reason (Triton's `reason` label on
        /metrics) is read from `error`, else from the exception being handled."""
        (self.success if ok else self.fail).add(ns)
        if self.series is not None:
            if not ok and error is None:
                error = sys.exc_info()[1]
            self.series.request_done(ok, ns, error)

    def execution(
        self, requests: int, items: int, input_ns: int, infer_ns: int, out_ns: int
    ) -> None:
        """One onnxruntime call of `items` rows made of (parts of) `requests` requests."""
        self.inference_count += items
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(out_ns * requests, requests)
        b = self.batches[items]
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(out_ns)
        if self.series is not None:
            self.series.execution(items, infer_ns)

    def executed(self, items: int) -> None:
        """One run of `items` rows without compute phases of its own (an ensemble's pipeline,
        whose steps count theirs)."""
        self.inference_count += items
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        if self.series is not None:
            self.series.execution(items, None)

    def as_dict(self) -> dict[str, Any]:
        """One entry of Triton's `model_stats` list."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


def merge(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several processes' `model_stats` lists (as_dict entries) summed into one, in the order of
    the first: counts and nanoseconds add up, batch_stats add up per batch size, and
    last_inference is the latest."""
    if not parts:
        return []
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for part in parts:
        for entry in part:
            key = (entry["name"], entry["version"])
            into = merged.get(key)
            if into is None:
                merged[key] = _copy(entry)
                continue
            into["last_inference"] = max(into["last_inference"], entry["last_inference"])
            into["inference_count"] += entry["inference_count"]
            into["execution_count"] += entry["execution_count"]
            _add_phases(into["inference_stats"], entry["inference_stats"])
            sizes = {b["batch_size"]: b for b in into["batch_stats"]}
            for b in entry["batch_stats"]:
                if b["batch_size"] in sizes:
                    _add_phases(sizes[b["batch_size"]], b)
                else:
                    sizes[b["batch_size"]] = _copy(b)
            into["batch_stats"] = [sizes[k] for k in sorted(sizes)]
    first = [(e["name"], e["version"]) for e in parts[0]]
    return [merged[k] for k in first] + [v for k, v in merged.items() if k not in set(first)]


def _copy(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (
            _copy(v) if isinstance(v, dict) else [_copy(x) for x in v] if isinstance(v, list) else v
        )
        for k, v in entry.items()
    }


def _add_phases(into: dict[str, Any], other: dict[str, Any]) -> None:
    for phase, value in other.items():
        if isinstance(value, dict) and "count" in value:
            into[phase]["count"] += value["count"]
            into[phase]["ns"] += value["ns"]
