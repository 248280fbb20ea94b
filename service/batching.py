"""A dynamic batcher per model: concurrent requests are queued and run together in one
onnxruntime call of at most `max_batch_size` items, after waiting at most `max_queue_delay_us`
for the batch to fill (counted from the oldest waiting request).

- Each request gets exactly its own rows back; a request larger than a batch is split over calls.
- A failed call is retried request by request, so one bad request does not fail its neighbours.
- The queue is bounded in items: a request that does not fit gets 503 at once.
- A request whose client went away, or that waited longer than `request_timeout_s`, is dropped
  before it runs.
- onnxruntime runs in a worker thread, one call at a time per model; while it runs, the next
  batch gathers, so the batch size adapts to the load.
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
from service.registry import Model

log = logging.getLogger("coordconv.batching")


class InferenceFailed(ServiceError):
    status_code = 500


@dataclass(eq=False)
class _Job:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    taken: int = 0  # rows handed to batches so far
    outputs: list[np.ndarray] = field(default_factory=list)
    cancelled: bool = False

    @property
    def started(self) -> bool:
        return self.taken > 0

    @property
    def remaining(self) -> int:
        return len(self.x) - self.taken


class Batcher:
    def __init__(
        self,
        model: Model,
        executor: Executor,
        metrics: Metrics,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        request_timeout_s: float,
    ) -> None:
        self.model = model
        self.executor = executor
        self.metrics = metrics
        self.max_batch = max_batch_size
        self.delay = max_queue_delay_us / 1e6
        self.max_queue = max_queue_size
        self.timeout = request_timeout_s
        self.queue: deque[_Job] = deque()
        self.queued_items = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._labels = {"model": model.name}
        self._gauge = metrics.queue_items.labels(model=model.name)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.model.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(Unavailable("the server is shutting down"))
        self.queue.clear()

    async def infer(
        self, x: np.ndarray, disconnected: Callable[[], Coroutine[Any, Any, None]] | None = None
    ) -> np.ndarray:
        """Queue `x` (rows of this model's input) and wait for its outputs."""
        n = len(x)
        if self.queued_items + n > self.max_queue:
            raise Unavailable(
                f"model {self.model.name!r} is overloaded ({self.queued_items} items queued, "
                f"limit {self.max_queue}); retry later",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        job = _Job(x=x, future=loop.create_future(), enqueued=loop.time())
        self.queue.append(job)
        self.queued_items += n
        self._gauge.set(self.queued_items)
        self._arrived.set()

        waiters: set[asyncio.Future[Any]] = {job.future}
        watcher: asyncio.Task[None] | None = None
        if disconnected is not None:
            watcher = loop.create_task(disconnected())
            waiters.add(watcher)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=self.timeout, return_when="FIRST_COMPLETED"
            )
            if job.future in done:
                return job.future.result()
            if watcher is not None and watcher in done:  # the client went away
                self._drop(job)
                raise ClientClosedRequest("the client closed the connection")
            if not job.started:  # timed out while still queued
                self._drop(job)
                raise Unavailable(
                    f"request waited more than {self.timeout:g} s in model "
                    f"{self.model.name!r}'s queue; retry later",
                    retry_after=max(1, round(self.timeout)),
                )
            return await job.future  # already running: finish it
        except asyncio.CancelledError:
            self._drop(job)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    def _drop(self, job: _Job) -> None:
        if job.cancelled or job.future.done():
            return
        job.cancelled = True
        self.queued_items -= job.remaining
        self._gauge.set(self.queued_items)
        job.future.cancel()

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to max_batch rows from the front of the queue: (job, start, stop) slices."""
        parts: list[tuple[_Job, int, int]] = []
        room = self.max_batch
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Let the batch fill, counted from the oldest waiting job.
            deadline = self.queue[0].enqueued + self.delay
            while self.queued_items < self.max_batch and (wait := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), wait)
            parts = self._take()
            if parts:
                now = loop.time()
                for job, start, _ in parts:
                    if start == 0:
                        self.metrics.queue_duration.labels(**self._labels).observe(
                            now - job.enqueued
                        )
                await self._execute(parts)

    async def _execute(self, parts: list[tuple[_Job, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        if len(parts) == 1:
            job, a, b = parts[0]
            batch = job.x[a:b]
        else:
            batch = np.concatenate([job.x[a:b] for job, a, b in parts])
        try:
            out = await loop.run_in_executor(self.executor, self._timed_run, batch)
        except Exception as exc:
            if len(parts) > 1:  # find the culprit: one call per job
                for part in parts:
                    await self._execute([part])
                return
            job = parts[0][0]
            log.error("model %s failed on a batch of %d: %s", self.model.name, len(batch), exc)
            if not job.future.done():
                job.future.set_exception(InferenceFailed(f"model {self.model.name!r} failed"))
            return
        offset = 0
        for job, a, b in parts:
            rows = out[offset : offset + (b - a)]
            offset += b - a
            if job.future.done():
                continue
            job.outputs.append(rows)
            if b == len(job.x):
                result = job.outputs[0] if len(job.outputs) == 1 else np.concatenate(job.outputs)
                job.future.set_result(result)

    def _timed_run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.model.run(batch)
        m, labels = self.metrics, self._labels
        m.compute_duration.labels(**labels).observe(time.perf_counter() - start)
        m.execution_count.labels(**labels).inc()
        m.inference_count.labels(**labels).inc(len(batch))
        m.batch_size.labels(**labels).observe(len(batch))
        return out
