"""Where a request body is parsed, by its size, so that no body stalls the event loop:

- small (up to 32 KiB, nearly every request): inline, a thread hop would cost more than parsing;
- medium (up to 1 MiB): a worker thread;
- large: a worker process. JSON parsers hold the GIL for the whole parse (seconds and gigabytes
  of Python objects for a 64 MB body of nested lists), which a thread would not release to the
  event loop; a process parses beside it and sends back compact numpy arrays, and its memory
  peak stays in the worker, which is recycled now and then.

The parse functions must be importable top-level functions (they are pickled by reference);
their errors (BadRequest with its message) come back as they were raised.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
INLINE_BYTES = 32 * 1024
THREAD_BYTES = 1024 * 1024


def _warm() -> None:
    """Import what the parsers need once per worker process."""
    import service.http.v1
    import service.http.v2  # noqa: F401


class BodyParser:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server has onnxruntime and gRPC threads, which fork breaks.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_warm,
                max_tasks_per_child=64,
            )
        return self._pool

    async def run(self, size: int, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` inline, in a thread or in a process, by the body's `size` in bytes."""
        if size <= INLINE_BYTES:
            return func(*args)
        if size <= THREAD_BYTES or self.processes == 0:
            return await asyncio.to_thread(func, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._processes(), func, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
