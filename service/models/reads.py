"""Repository reads (scans, configs, ONNX files) on threads of their own, with a time limit.

A read of the file system can block for ever: a FIFO (refused by type in repository.py), a hung
network mount, a disk that stopped answering. Run on the shared thread pool, a few of those would
exhaust it and hang everything else that uses it (/metrics, parsing, the repository index), and
the threads would keep the process from exiting. Here each read runs on a daemon thread, at most
`concurrency` at once; a read that does not finish within `timeout_s` fails its caller with one
line (the thread is left to finish or not: no one waits for it, and it never holds up exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from service.errors import ModelError

T = TypeVar("T")


class Reads:
    def __init__(self, timeout_s: float, concurrency: int = 4) -> None:
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self.stuck = 0  # reads that timed out and may still hold a thread

    async def run(self, what: str, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._slots.acquire(blocking=False):
            raise ModelError(
                f"{what}: every repository reader is busy with a read that has not finished "
                f"(stuck: {self.stuck}); is the repository's storage hanging?"
            )

        def work() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = func(*args)
            except BaseException as exc:  # handed to the waiter as it was raised
                error = exc
            finally:
                self._slots.release()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

        threading.Thread(target=work, name="repository-read", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            self.stuck += 1
            future.add_done_callback(lambda _: self._unstuck())
            raise ModelError(
                f"{what}: the read did not finish within {self.timeout_s:g} s "
                "(REPOSITORY_TIMEOUT_S)"
            ) from None

    def _unstuck(self) -> None:
        self.stuck -= 1


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
