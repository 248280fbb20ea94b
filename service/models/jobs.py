"""What the batcher's scheduler threads and the event loop hand each other (a queued request,
`Job`; one onnxruntime call's result, `Execution`), and what is made of a call afterwards: the
failure its clients see, and with tracing on the batch's spans (service/metrics/tracing.py),
made with the times measured in the batcher.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry.trace import Span, Tracer

from service.errors import InferenceFailed, PayloadTooLarge, ServiceError, Unavailable
from service.metrics import BACKEND, tag, tracing

Outputs = tuple[np.ndarray, ...]
Part = tuple["Job", int, int]  # rows [start, stop) of a job
# How onnxruntime (and numpy, gathering a batch) report running out of memory.
OUT_OF_MEMORY = re.compile(r"MemoryError|bad_alloc|[Ff]ailed to allocate|out of memory")


@dataclass(eq=False)
class Job:
    """A queued request: its rows, and how far they have got."""

    x: np.ndarray
    future: asyncio.Future[Outputs]
    enqueued: float  # time.monotonic()
    taken: int = 0  # rows handed to batches so far (under the batcher's lock)
    cancelled: bool = False  # (under the batcher's lock)
    outputs: dict[int, Outputs] = field(default_factory=dict)  # by first row (event loop only)
    answered: int = 0  # rows whose outputs arrived (event loop only)
    trace: tracing.Queued | None = None  # its request's trace context (tracing on only)

    @property
    def started(self) -> bool:
        return self.taken > 0

    @property
    def remaining(self) -> int:
        return len(self.x) - self.taken


@dataclass
class Execution:
    """One onnxruntime call's result, handed from a scheduler thread to the event loop."""

    parts: list[Part]
    outputs: Outputs | None  # None: the call failed
    input_ns: int = 0
    infer_ns: int = 0
    error: str = ""
    # Tracing on: the batch's span (open until its answers are handed back) and its start
    # (epoch nanoseconds).
    tracer: Tracer | None = None
    span: Span | None = None
    started_ns: int = 0


def failure(name: str, error: str, items: int) -> ServiceError:
    """A failed call as its client should see it: running out of memory is the size of the
    request (413, or 503 for a single item: the server is short of memory), anything else the
    model's failure."""
    found: ServiceError = InferenceFailed(f"model {name!r} failed")
    if OUT_OF_MEMORY.search(error):
        if items > 1:
            found = PayloadTooLarge(
                f"model {name!r} could not allocate the memory for {items} items at once; send "
                "fewer per request"
            )
        else:
            found = Unavailable(f"model {name!r} is short of memory; retry", retry_after=1)
    tag(found, BACKEND)
    return found


def batch_span(
    tracer: Tracer,
    own: dict[str, Any],
    parts: list[Part],
    wall: int,
    t0: int,
    t1: int,
    t2: int,
    error: str | None,
) -> Span:
    """In the scheduler thread: the batch's span (`own`: the version's attributes)."""
    attributes = {
        **own,
        "coordconv.batch.size": sum(b - a for _, a, b in parts),
        "coordconv.batch.requests": len(parts),
        "coordconv.compute_input_us": (t1 - t0) / 1000,
    }
    requests = [(job.trace, b - a) for job, a, b in parts if job.trace is not None]
    return tracing.batch_span(
        tracer, attributes, requests, wall, wall + t1 - t0, wall + t2 - t0, error
    )


def trace_delivery(e: Execution, own: dict[str, Any], output_ns: int, error: str | None) -> None:
    """On the event loop, tracing on: the batch's end, and each traced request's queue (the
    first time its rows run) and execute spans."""
    tracer, batch = e.tracer, e.span
    if tracer is None or batch is None:
        return
    now = time.time_ns()
    tracing.batch_done(batch, output_ns, now)
    size = sum(b - a for _, a, b in e.parts)
    for job, a, b in e.parts:
        q = job.trace
        if q is None:
            continue
        if a == 0:
            tracing.queue_span(tracer, q, e.started_ns, {**own, "coordconv.items": len(job.x)})
        attributes = {**own, "coordconv.rows": b - a, "coordconv.batch.size": size}
        tracing.execute_span(tracer, q, batch, e.started_ns, now, attributes, error)
