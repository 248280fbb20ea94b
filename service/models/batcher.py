"""A dynamic batcher per model version, driven by its config's `dynamic_batching`: concurrent
requests are queued and run together in one onnxruntime call of at most `max_batch_size` items,
after waiting at most `max_queue_delay_microseconds` for the batch to fill (counted from the
oldest waiting request), or at once when a preferred batch size is reached.

- Each request gets exactly its own rows back; a request larger than a batch is split over calls.
- A failed call is retried request by request, so one bad request does not fail its neighbours.
- The queue is bounded in items (`max_queue_size`): a request that does not fit gets 503 at once.
- A request still queued after the queue policy's timeout gets 503 (`timeout_action: REJECT`) or
  keeps waiting (`DELAY`); one whose task is cancelled (its client went away, over HTTP or gRPC)
  is dropped before it runs.

Batches are formed where they run, as in Triton: up to `instance_group` count scheduler threads
each take the next batch from the queue and run it, then take the next, without a round trip
through the event loop. The loop only queues requests and hands answers back, so onnxruntime is
never idle while the loop is busy writing the last batch's answers. A thread exits when the queue
is empty; the next request starts one again, and a thread that leaves work in the queue starts a
sibling (up to the count).

What happens is counted where it happens: the version's statistics (and through them Triton's
Prometheus families, service/metrics), the pending gauge, the failure reasons of what it refuses
(REJECTED: a full queue or a queue timeout; BACKEND: onnxruntime failed) and, with tracing on,
each traced request's `queue` and `execute` spans and each batch's spans
(service/metrics/tracing.py), made with the times measured here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from service.errors import Unavailable
from service.metrics import REJECTED, Metrics, tag, tracing
from service.models.config import Scheduling
from service.models.jobs import (
    Execution,
    Job,
    Outputs,
    Part,
    batch_span,
    failure,
    trace_delivery,
)
from service.models.statistics import ModelStats

log = logging.getLogger("coordconv.batching")


class Batcher:
    def __init__(
        self,
        name: str,
        version: str,
        run: Callable[[np.ndarray], Outputs],
        executor: Executor,
        scheduling: Scheduling,
        metrics: Metrics,
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.version = version
        self.run = run
        self.executor = executor
        self.s = scheduling
        self.delay = scheduling.max_queue_delay_us / 1e6
        # Run at once when this many items wait: the largest preferred size, else a full batch.
        self.eager = max(scheduling.preferred_batch_sizes, default=scheduling.max_batch_size)
        self.metrics = metrics
        self.stats = stats
        # The queue and every count below are shared with the scheduler threads: under _cond.
        self._cond = threading.Condition()
        self.queue: deque[Job] = deque()
        self.queued_items = 0
        self._threads = 0  # scheduler threads alive (at most scheduling.instances)
        self._filling = 0  # of those, waiting for a batch to fill
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()  # set when the last scheduler thread has exited
        self._stopped.set()
        self.pending = 0  # requests queued that have not started (Triton's pending count)
        labels = {"model": name, "version": version}
        self._gauge = metrics.queue_items.labels(**labels)
        self._queue_hist = metrics.queue_duration.labels(**labels)
        # Triton's families and the execution counts follow the statistics (one place counts
        # both: service/models/statistics.py); the pending gauge is set here.
        metrics.attach(stats)
        self._span_attributes = {"coordconv.model": name, "coordconv.model_version": version}

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self.queue and self._threads == 0

    def start(self) -> None:
        """On the event loop that will await the answers."""
        self._loop = asyncio.get_running_loop()

    async def stop(self, message: str = "the server is shutting down") -> None:
        """Stop taking batches; fail what is still queued with 503 (calls in flight finish)."""
        with self._cond:
            self._stopping = True
            for job in self.queue:
                if not job.future.done():
                    job.future.set_exception(Unavailable(message))
            self.queue.clear()
            self.queued_items = 0
            self._gauge.set(0)
            self.pending = 0
            self._set_pending()
            self._cond.notify_all()
        await self._stopped.wait()
        self.metrics.detach(self.stats)

    def shed(self, message: str) -> None:
        """Fail every queued request that has not started with 503 + Retry-After."""
        with self._cond:
            for job in [j for j in self.queue if not j.started and not j.future.done()]:
                job.future.set_exception(Unavailable(message, retry_after=1))
                job.cancelled = True
                self.queued_items -= job.remaining
                self.pending -= 1
            self._gauge.set(self.queued_items)
            self._set_pending()

    def _set_pending(self) -> None:
        """Under the lock. (A version replaced by a reload no longer sets it.)"""
        series = self.stats.series
        if series is not None:
            series.pending.set(self.pending)

    async def infer(self, x: np.ndarray) -> Outputs:
        """Queue `x` (rows of this model's input) and wait for its outputs, one array each.
        Cancelled (its client went away), its rows that have not run are dropped."""
        n = len(x)
        loop = asyncio.get_running_loop()
        job = Job(x=x, future=loop.create_future(), enqueued=time.monotonic())
        if tracing.tracer is not None:
            job.trace = tracing.queued(time.time_ns())
        with self._cond:
            if self._stopping:
                raise Unavailable(f"model {self.name!r} is unloading; retry", retry_after=1)
            if self.queued_items + n > self.s.max_queue_size:
                raise tag(
                    Unavailable(
                        f"model {self.name!r} is overloaded ({self.queued_items} items queued, "
                        f"limit {self.s.max_queue_size}); retry later",
                        retry_after=1,
                    ),
                    REJECTED,
                )
            self.queue.append(job)
            self.queued_items += n
            self._gauge.set(self.queued_items)
            self.pending += 1
            self._set_pending()
            if self._filling:
                self._cond.notify()
            spawn = not self._filling and self._threads < self.s.instances
            if spawn:
                self._threads += 1
                self._stopped.clear()
        if spawn:
            self.executor.submit(self._schedule)

        # A timer instead of a task per request: the queue timeout fails a job that never
        # started.
        timer = None
        if not self.s.delay_on_timeout:
            timer = loop.call_later(self.s.timeout_s, self._expire, job)
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, job: Job) -> None:
        with self._cond:
            queued = not job.started
        if queued and not job.future.done():  # still queued: 503; running: finish it
            self._drop(
                job,
                tag(
                    Unavailable(
                        f"request waited more than {self.s.timeout_s:g} s in model "
                        f"{self.name!r}'s queue; retry later",
                        retry_after=max(1, round(self.s.timeout_s)),
                    ),
                    REJECTED,
                ),
            )

    def _drop(self, job: Job, error: Exception | None = None) -> None:
        """Take `job` out of the queue (rows already running are not counted); its waiter gets
        `error`, or is cancelled. Its waiter's task cancelled, the future is done already: the
        rows that have not run are dropped all the same."""
        with self._cond:
            if job.cancelled or job.answered == len(job.x):
                return
            started = job.started
            job.cancelled = True
            self.queued_items -= job.remaining
            self._gauge.set(self.queued_items)
            if not started:
                self.pending -= 1
                self._set_pending()
        t = tracing.tracer
        if t is not None and job.trace is not None and not started:
            reason = "cancelled" if error is None else str(error)
            attributes = {**self._span_attributes, "coordconv.items": len(job.x)}
            tracing.queue_span(t, job.trace, time.time_ns(), attributes, reason)
        if job.future.done():
            return
        if error is None:
            job.future.cancel()
        else:
            job.future.set_exception(error)

    # -- scheduler threads -------------------------------------------------------------------

    def _schedule(self) -> None:
        """A scheduler thread: take the next batch, run it, hand it to the event loop; repeat
        until the queue is empty."""
        loop = self._loop
        assert loop is not None
        while True:
            with self._cond:
                parts, waits = self._next_batch()
                if not parts:
                    self._threads -= 1
                    if self._threads == 0:
                        loop.call_soon_threadsafe(self._all_exited)
                    return
                # More than this batch waits (the rest of a large request): a sibling takes it.
                sibling = bool(self.queue) and self._threads < self.s.instances
                if sibling:
                    self._threads += 1
            if sibling:
                self.executor.submit(self._schedule)
            executions = self._execute(parts)
            loop.call_soon_threadsafe(self._deliver, executions, waits)

    def _all_exited(self) -> None:
        with self._cond:  # unless a new request has started a thread since
            if self._threads == 0:
                self._stopped.set()

    def _next_batch(self) -> tuple[list[Part], list[float]]:
        """Under the lock: wait for the batch to fill (counted from the oldest waiting job), then
        take it. The parts, and how long each job that starts now has waited (seconds)."""
        while True:
            while self.queue and self.queue[0].cancelled:
                self.queue.popleft()
            if self._stopping or not self.queue:
                return [], []
            now = time.monotonic()
            wait = self.queue[0].enqueued + self.delay - now
            if self.queued_items >= self.eager or wait <= 0:
                break
            self._filling += 1
            self._cond.wait(wait)
            self._filling -= 1
        parts = self._take(self._batch_limit())
        return parts, [now - job.enqueued for job, start, _ in parts if start == 0]

    def _take(self, limit: int) -> list[Part]:
        """Up to `limit` rows from the front of the queue: (job, start, stop) slices."""
        parts: list[Part] = []
        room = limit
        while self.queue and room > 0:
            job = self.queue[0]
            if job.cancelled:
                self.queue.popleft()
                continue
            k = min(room, job.remaining)
            parts.append((job, job.taken, job.taken + k))
            if job.taken == 0:
                self.pending -= 1
            job.taken += k
            room -= k
            self.queued_items -= k
            if job.remaining == 0:
                self.queue.popleft()
        self._gauge.set(self.queued_items)
        self._set_pending()
        return parts

    def _batch_limit(self) -> int:
        """The largest preferred size that the queue fills, else everything up to a full batch;
        without batching (max_batch_size 0), the first request alone."""
        if not self.s.batching:
            return next((j.remaining for j in self.queue if not j.cancelled), 0)
        n = min(self.queued_items, self.s.max_batch_size)
        fitting = [p for p in self.s.preferred_batch_sizes if p <= n]
        return max(fitting) if fitting else self.s.max_batch_size

    def _execute(self, parts: list[Part]) -> list[Execution]:
        """In a scheduler thread: gather the rows and run onnxruntime; if the call fails, find
        the culprit with one call per job."""
        tracer = tracing.tracer
        if tracer is not None and all(job.trace is None for job, _, _ in parts):
            tracer = None  # none of its requests is traced
        wall = time.time_ns() if tracer is not None else 0
        t0 = t1 = time.perf_counter_ns()
        try:  # nothing may escape: a lost scheduler thread would strand the queue
            if len(parts) == 1:
                job, a, b = parts[0]
                batch = job.x[a:b]
            else:
                batch = np.concatenate([job.x[a:b] for job, a, b in parts])
            t1 = time.perf_counter_ns()
            out = self.run(batch)
        except Exception as exc:
            error = "MemoryError" if isinstance(exc, MemoryError) else str(exc)
            if len(parts) > 1:
                if tracer is not None:
                    ended = time.perf_counter_ns()
                    failed = f"{error[:200]} (retried request by request)"
                    span = batch_span(
                        tracer, self._span_attributes, parts, wall, t0, t1, ended, failed
                    )
                    span.end(wall + ended - t0)
                return [e for part in parts for e in self._execute([part])]
            e = Execution(parts, None, error=error)
            if tracer is not None:
                ended = time.perf_counter_ns()
                e.span = batch_span(
                    tracer, self._span_attributes, parts, wall, t0, t1, ended, error[:200]
                )
                e.tracer, e.started_ns = tracer, wall
            return [e]
        t2 = time.perf_counter_ns()
        e = Execution(parts, out, t1 - t0, t2 - t1)
        if tracer is not None:
            e.span = batch_span(tracer, self._span_attributes, parts, wall, t0, t1, t2, None)
            e.tracer, e.started_ns = tracer, wall
        return [e]

    # -- back on the event loop ---------------------------------------------------------------

    def _deliver(self, executions: list[Execution], waits: list[float]) -> None:
        for waited in waits:
            self._queue_hist.observe(waited)
            self.stats.queue.add(int(waited * 1e9))
        for e in executions:
            if e.outputs is None:
                job, a, b = e.parts[0]
                log.error("model %s failed on %d items: %s", self.name, b - a, e.error)
                if not job.future.done():
                    job.future.set_exception(failure(self.name, e.error, b - a))
                if e.span is not None:
                    trace_delivery(e, self._span_attributes, 0, e.error[:200])
                continue
            start = time.perf_counter_ns()
            offset = 0
            for job, a, b in e.parts:
                rows = tuple(o[offset : offset + (b - a)] for o in e.outputs)
                offset += b - a
                if job.future.done():
                    continue
                job.outputs[a] = rows
                job.answered += b - a
                if job.answered == len(job.x):
                    if len(job.outputs) == 1:
                        result = rows
                    else:  # split over calls, which may finish in any order
                        pieces = [job.outputs[k] for k in sorted(job.outputs)]
                        result = tuple(np.concatenate(cols) for cols in zip(*pieces, strict=True))
                    job.future.set_result(result)
            items = offset
            output_ns = time.perf_counter_ns() - start
            self.stats.execution(len(e.parts), items, e.input_ns, e.infer_ns, output_ns)
            if e.span is not None:
                trace_delivery(e, self._span_attributes, output_ns, None)
