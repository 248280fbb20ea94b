"""A dynamic batcher per model version, driven by its config's `dynamic_batching`: concurrent
requests are queued and run together in one onnxruntime call of at most `max_batch_size` items,
after waiting at most `max_queue_delay_microseconds` for the batch to fill (counted from the
oldest waiting request), or at once when a preferred batch size is reached.

- Each request gets exactly its own rows back; a request larger than a batch is split over calls.
- A failed call is retried request by request, so one bad request does not fail its neighbours.
- The queue is bounded in items (`max_queue_size`): a request that does not fit gets 503 at once.
- A request still queued after the queue policy's timeout gets 503 (`timeout_action: REJECT`) or
  keeps waiting (`DELAY`); one whose client went away is dropped before it runs.
- onnxruntime runs in the version's own threads, `instance_group` count calls at a time; while
  they run, the next batch gathers, so the batch size adapts to the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ClientClosedRequest, ServiceError, Unavailable
from service.metrics import Metrics
from service.model_config import Scheduling
from service.stats import ModelStats

log = logging.getLogger("coordconv.batching")
Outputs = tuple[np.ndarray, ...]
Disconnected = Callable[[], Coroutine[Any, Any, None]]
WATCH_AFTER_S = 0.05


class InferenceFailed(ServiceError):
    status_code = 500


@dataclass(eq=False)
class _Job:
    x: np.ndarray
    future: asyncio.Future[Outputs]
    enqueued: float
    taken: int = 0  # rows handed to batches so far
    outputs: list[Outputs] = field(default_factory=list)
    cancelled: bool = False
    watcher: asyncio.Task[None] | None = None  # notices the client going away

    @property
    def started(self) -> bool:
        return self.taken > 0

    @property
    def remaining(self) -> int:
        return len(self.x) - self.taken


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
        self.run = run
        self.executor = executor
        self.s = scheduling
        self.delay = scheduling.max_queue_delay_us / 1e6
        # Run at once when this many items wait: the largest preferred size, else a full batch.
        self.eager = max(scheduling.preferred_batch_sizes, default=scheduling.max_batch_size)
        self.metrics = metrics
        self.stats = stats
        self.queue: deque[_Job] = deque()
        self.queued_items = 0
        self.running = 0  # onnxruntime calls in flight
        self._arrived = asyncio.Event()
        self._slot = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        labels = {"model": name, "version": version}
        self._gauge = metrics.queue_items.labels(**labels)
        self._queue_hist = metrics.queue_duration.labels(**labels)
        self._compute_hist = metrics.compute_duration.labels(**labels)
        self._executions = metrics.execution_count.labels(**labels)
        self._inferences = metrics.inference_count.labels(**labels)
        self._batch_hist = metrics.batch_size.labels(**labels)
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> bool:
        return not self.queue and self.running == 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self, message: str = "the server is shutting down") -> None:
        """Stop taking batches; fail what is still queued with 503 (calls in flight finish)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(Unavailable(message))
        self.queue.clear()
        self.queued_items = 0
        self._gauge.set(0)
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)

    def shed(self, message: str) -> None:
        """Fail every queued request that has not started with 503 + Retry-After."""
        for job in [j for j in self.queue if not j.started and not j.future.done()]:
            job.future.set_exception(Unavailable(message, retry_after=1))
            job.cancelled = True
            self.queued_items -= job.remaining
        self._gauge.set(self.queued_items)

    async def infer(self, x: np.ndarray, disconnected: Disconnected | None = None) -> Outputs:
        """Queue `x` (rows of this model's input) and wait for its outputs, one array each."""
        n = len(x)
        if self.queued_items + n > self.s.max_queue_size:
            raise Unavailable(
                f"model {self.name!r} is overloaded ({self.queued_items} items queued, "
                f"limit {self.s.max_queue_size}); retry later",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        job = _Job(x=x, future=loop.create_future(), enqueued=loop.time())
        self.queue.append(job)
        self.queued_items += n
        self._gauge.set(self.queued_items)
        self._arrived.set()

        # Timers instead of a task per request: the queue timeout fails a job that never
        # started, and only a request still waiting after WATCH_AFTER_S starts to watch for its
        # client going away (most are answered sooner, and a task per request costs).
        timers = []
        if not self.s.delay_on_timeout:
            timers.append(loop.call_later(self.s.timeout_s, self._expire, job))
        if disconnected is not None:
            timers.append(loop.call_later(WATCH_AFTER_S, self._watch, job, disconnected))
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job)
            raise
        finally:
            for timer in timers:
                timer.cancel()
            if job.watcher is not None:
                job.watcher.cancel()

    def _expire(self, job: _Job) -> None:
        if not job.started and not job.future.done():  # still queued: 503; running: finish it
            self._drop(
                job,
                Unavailable(
                    f"request waited more than {self.s.timeout_s:g} s in model "
                    f"{self.name!r}'s queue; retry later",
                    retry_after=max(1, round(self.s.timeout_s)),
                ),
            )

    def _watch(self, job: _Job, disconnected: Disconnected) -> None:
        if job.future.done():
            return
        job.watcher = asyncio.get_running_loop().create_task(disconnected())

        def gone(watcher: asyncio.Task[None]) -> None:
            if not watcher.cancelled() and watcher.exception() is None:
                self._drop(job, ClientClosedRequest("the client closed the connection"))

        job.watcher.add_done_callback(gone)

    def _drop(self, job: _Job, error: Exception | None = None) -> None:
        """Take `job` out of the queue (rows already running are not counted); its waiter gets
        `error`, or is cancelled."""
        if job.future.done():
            return
        if not job.cancelled:
            job.cancelled = True
            self.queued_items -= job.remaining
            self._gauge.set(self.queued_items)
        if error is None:
            job.future.cancel()
        else:
            job.future.set_exception(error)

    def _take(self, limit: int) -> list[tuple[_Job, int, int]]:
        """Up to `limit` rows from the front of the queue: (job, start, stop) slices."""
        parts: list[tuple[_Job, int, int]] = []
        room = limit
        while self.queue and room > 0:
            job = self.queue[0]
            if job.cancelled:
                self.queue.popleft()
                continue
            k = min(room, job.remaining)
            parts.append((job, job.taken, job.taken + k))
            job.taken += k
            room -= k
            self.queued_items -= k
            if job.remaining == 0:
                self.queue.popleft()
        self._gauge.set(self.queued_items)
        return parts

    def _batch_limit(self) -> int:
        """The largest preferred size that the queue fills, else everything up to a full batch."""
        n = min(self.queued_items, self.s.max_batch_size)
        fitting = [p for p in self.s.preferred_batch_sizes if p <= n]
        return max(fitting) if fitting else self.s.max_batch_size

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            while self.running >= self.s.instances:  # every instance busy: wait for one
                self._slot.clear()
                await self._slot.wait()
            # Let the batch fill, counted from the oldest waiting job.
            deadline = self.queue[0].enqueued + self.delay
            while self.queued_items < self.eager and (wait := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), wait)
            parts = self._take(self._batch_limit())
            if not parts:
                continue
            now = loop.time()
            for job, start, _ in parts:
                if start == 0:
                    waited = now - job.enqueued
                    self._queue_hist.observe(waited)
                    self.stats.queue.add(int(waited * 1e9))
            self.running += 1
            call = loop.create_task(self._execute(parts))
            self._calls.add(call)
            call.add_done_callback(self._call_done)

    def _call_done(self, call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        self.running -= 1
        self._slot.set()

    async def _execute(self, parts: list[tuple[_Job, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            out, input_ns, infer_ns = await loop.run_in_executor(self.executor, self._call, parts)
        except Exception as exc:
            if len(parts) > 1:  # find the culprit: one call per job
                for part in parts:
                    await self._execute([part])
                return
            job = parts[0][0]
            log.error("model %s failed on %d items: %s", self.name, parts[0][2] - parts[0][1], exc)
            if not job.future.done():
                job.future.set_exception(InferenceFailed(f"model {self.name!r} failed"))
            return
        start = time.perf_counter_ns()
        offset = 0
        for job, a, b in parts:
            rows = tuple(o[offset : offset + (b - a)] for o in out)
            offset += b - a
            if job.future.done():
                continue
            job.outputs.append(rows)
            if b == len(job.x):
                if len(job.outputs) == 1:
                    result = job.outputs[0]
                else:
                    result = tuple(np.concatenate(cols) for cols in zip(*job.outputs, strict=True))
                job.future.set_result(result)
        items = offset
        self.stats.execution(len(parts), items, input_ns, infer_ns, time.perf_counter_ns() - start)
        self._compute_hist.observe(infer_ns / 1e9)
        self._executions.inc()
        self._inferences.inc(items)
        self._batch_hist.observe(items)

    def _call(self, parts: list[tuple[_Job, int, int]]) -> tuple[Outputs, int, int]:
        """In an executor thread: gather the rows and run onnxruntime. (outputs, ns, ns)."""
        t0 = time.perf_counter_ns()
        if len(parts) == 1:
            job, a, b = parts[0]
            batch = job.x[a:b]
        else:
            batch = np.concatenate([job.x[a:b] for job, a, b in parts])
        t1 = time.perf_counter_ns()
        out = self.run(batch)
        return out, t1 - t0, time.perf_counter_ns() - t1
