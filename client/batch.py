"""Push whole files of work through the service: batches of `batch_size` items, at most
`concurrency` requests in flight, retries (in the API client), per-item failures, progress, and
resumable outputs."""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.api import DEFAULT_RETRY_WINDOW, FATAL, AsyncCoordConvClient, ClientError
from client.files import Items, PngDir, StagedFile


class JobRefused(ClientError):
    """An answer no retry and no smaller batch can fix (wrong key, unknown model): the job stops."""


class Sink(Protocol):
    def done(self, names: list[str]) -> set[int]: ...
    def write(self, idx: np.ndarray, names: list[str], result: np.ndarray) -> None: ...
    def finish(self, names: list[str]) -> None: ...


@dataclass
class Summary:
    total: int
    skipped: int = 0
    succeeded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0
    output_written: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every few seconds."""

    def __init__(self, total: int, initial: int, label: str, quiet: bool = False) -> None:
        self.total, self.count, self.failed = total, initial, 0
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0
        self.quiet = quiet
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="item")

    def update(self, ok: int, failed: int) -> None:
        self.count += ok + failed
        self.failed += failed
        if self.bar is not None:
            self.bar.update(ok + failed)
            self.bar.set_postfix(failed=self.failed)
        elif not self.quiet and time.monotonic() - self.last >= 2.0:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed else 0.0
        eta = (self.total - self.count) / rate if rate else float("inf")
        print(
            f"{self.label}: {self.count}/{self.total} items ({100 * self.count / self.total:.0f}%),"
            f" {rate:.0f} items/s, ETA {eta:.0f}s, {self.failed} failed",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet:
            self._line()


async def _send(
    client: AsyncCoordConvClient,
    task: str,
    items: Items,
    idx: np.ndarray,
    model: str,
    version: str | None,
) -> np.ndarray:
    if task == "render":
        assert items.coords is not None
        return await client.render(items.coords[idx], model, version)
    if items.pngs is not None:
        pngs = [items.pngs[i].read_bytes() for i in idx.tolist()]
        return await client.locate_rows(pngs, model, version)
    assert items.images is not None
    images = np.asarray(items.images[idx], dtype=np.float32)
    return await client.locate_rows(images, model, version)


async def _run_batch(
    client: AsyncCoordConvClient,
    task: str,
    items: Items,
    idx: np.ndarray,
    model: str,
    version: str | None,
    sink: Sink,
    summary: Summary,
    progress: Progress,
    min_confidence: float | None = None,
) -> None:
    """Send one batch; a 4xx answer about the items is split in halves until the bad items are
    isolated; an answer about the job itself (FATAL: key, model, route) stops everything."""
    try:
        result = await _send(client, task, items, idx, model, version)
    except ClientError as exc:
        if exc.status in FATAL:
            raise JobRefused(exc.status, exc.message) from None
        if 400 <= exc.status < 500 and len(idx) > 1:
            half = len(idx) // 2
            for part in (idx[:half], idx[half:]):
                await _run_batch(
                    client,
                    task,
                    items,
                    part,
                    model,
                    version,
                    sink,
                    summary,
                    progress,
                    min_confidence,
                )
            return
        reason = str(exc)
        summary.failures += [(items.names[i], reason) for i in idx.tolist()]
        progress.update(0, len(idx))
        return
    if min_confidence is not None and task == "locate":
        doubtful = ~(result[:, 2] >= min_confidence)  # NaN (no confidence) is doubtful too
        for i, row in zip(idx[doubtful].tolist(), result[doubtful], strict=True):
            shown = (
                "none (the model answers no confidence)" if np.isnan(row[2]) else (f"{row[2]:.3f}")
            )
            summary.failures.append(
                (items.names[i], f"confidence {shown} below --min-confidence {min_confidence}")
            )
        progress.update(0, int(doubtful.sum()))
        idx, result = idx[~doubtful], result[~doubtful]
        if not len(idx):
            return
    await asyncio.to_thread(sink.write, idx, items.names, result)
    summary.succeeded += len(idx)
    progress.update(len(idx), 0)


async def run(
    task: str,
    items: Items,
    output: Path,
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    version: str | None = None,
    batch_size: int = 64,
    concurrency: int = 4,
    retries: int = 5,
    timeout: float = 30.0,
    retry_window: float = DEFAULT_RETRY_WINDOW,
    resume: bool = False,
    quiet: bool = False,
    min_confidence: float | None = None,
) -> Summary:
    """Run a whole job; returns its summary. Failed items go to `<output>.failed.csv`.
    Raises JobRefused when the service refuses the job itself, InputError when `resume` meets
    the output of another job."""
    model = model or task
    job = {
        "task": task,
        "model": model,
        "version": version,
        "input_sha256": await asyncio.to_thread(items.fingerprint),
        "items": len(items),
        "output": output.suffix.lower() or "dir",
        "min_confidence": min_confidence,
    }
    sink: Sink
    if task == "render" and output.suffix.lower() != ".npy":
        sink = PngDir(output, resume, job)
    else:
        sink = StagedFile(output, resume, job)
    done = sink.done(items.names)
    pending = np.array([i for i in range(len(items)) if i not in done], dtype=np.int64)
    summary = Summary(total=len(items), skipped=len(done))
    progress = Progress(len(items), len(done), task, quiet)
    start = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    async with AsyncCoordConvClient(
        url, api_key, timeout, retries, max_connections=concurrency, retry_window=retry_window
    ) as client:

        def count_retry(attempt: int, reason: str) -> None:
            summary.retries += 1

        client.on_retry = count_retry

        async def guarded(idx: np.ndarray) -> None:
            async with gate:
                await _run_batch(
                    client,
                    task,
                    items,
                    idx,
                    model,
                    version,
                    sink,
                    summary,
                    progress,
                    min_confidence,
                )

        batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
        try:
            async with asyncio.TaskGroup() as group:  # a refused job cancels the other batches
                for b in batches:
                    group.create_task(guarded(b))
        except* JobRefused as refused:
            progress.close()
            raise refused.exceptions[0] from None
    progress.close()
    summary.seconds = time.monotonic() - start
    failed_file = output.with_name(output.name + ".failed.csv")
    if summary.failures:
        with open(failed_file, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "reason"])
            w.writerows(summary.failures)
    else:
        failed_file.unlink(missing_ok=True)
        sink.finish(items.names)
        summary.output_written = True
    return summary
