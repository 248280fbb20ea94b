"""Where a request is decoded: the one rule, for every protocol and encoding, so that no body
stalls the event loop and no answer depends on the path it took.

What decoding costs depends on what it does, not on the protocol:

- `Cost.PARSE`, text parsed into Python objects (JSON: /v1 bodies, a /v2 JSON header with its
  `data`). The parser holds the GIL for the whole parse (seconds and gigabytes of Python objects
  for 64 MB of nested lists), which a thread would not release to the event loop. Up to
  INLINE_BYTES: inline (a thread hop would cost more); up to THREAD_BYTES: a thread; beyond: a
  worker process that sends back compact numpy arrays, its memory peak kept in the worker.
- `Cost.DECODE`, bytes decoded or checked by code that releases the GIL (zlib for PNGs, numpy's
  copies, casts and range checks of NPY bodies, V2 binary tensors and gRPC contents). Up to
  INLINE_BYTES inline, beyond that a thread.

`size` is the number of bytes that cost applies to: for a V2 binary request only its JSON header
is parsed (the tensors are views of the body), so its header's length decides, not the body's.

A function sent to a process must be an importable top-level function whose arguments and result
pickle (plain types and numpy arrays); its errors (BadRequest with its message) come back as they
were raised. tests/service/test_offload.py drives every protocol and encoding across both
thresholds.
"""

from __future__ import annotations

import asyncio
import enum
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
INLINE_BYTES = 32 * 1024
THREAD_BYTES = 1024 * 1024


class Cost(enum.Enum):
    PARSE = "parse"  # holds the GIL: a process beyond THREAD_BYTES
    DECODE = "decode"  # releases the GIL: a thread beyond INLINE_BYTES


class Where(enum.Enum):
    INLINE = "inline"
    THREAD = "thread"
    PROCESS = "process"


def placement(cost: Cost, size: int, processes: int) -> Where:
    """The rule itself: where work of `cost` over `size` bytes runs."""
    if size <= INLINE_BYTES:
        return Where.INLINE
    if cost is Cost.DECODE or size <= THREAD_BYTES or processes == 0:
        return Where.THREAD
    return Where.PROCESS


class Offload:
    """Runs decoding where `placement` says; owns the worker processes (started on first use)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server has onnxruntime and gRPC threads, which fork breaks.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=64,  # a parse's memory peak does not stay for ever
            )
        return self._pool

    async def run(self, cost: Cost, size: int, func: Callable[..., T], *args: object) -> T:
        where = placement(cost, size, self.processes)
        if where is Where.INLINE:
            return func(*args)
        if where is Where.THREAD:
            return await asyncio.to_thread(func, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._process_pool(), func, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
