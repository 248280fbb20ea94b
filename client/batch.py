"""Push whole files of work through the service: batches of `batch_size` items read from the
input as they are needed (memory does not grow with the input), at most `concurrency` requests
in flight, retries (in the API client), per-item failures streamed to `OUTPUT.failed.csv`,
progress, and outputs the client owns (client/outputs.py)."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from client.api import (
    DEFAULT_FIRST_CONTACT_S,
    DEFAULT_RETRY_WINDOW,
    FATAL,
    AsyncCoordConvClient,
    ClientError,
    Unreachable,
)
from client.files import Batch, Source, naming, read_png_files, tmp_name
from client.outputs import Output, open_output
from coordconv.contract import CANVAS

# Failures kept in memory for the summary (all of them go to OUTPUT.failed.csv).
MAX_LISTED = 1000


class JobRefused(ClientError):
    """An answer no retry and no smaller batch can fix (wrong key, unknown model): the job stops."""


@dataclass
class Summary:
    total: int
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0  # items without a result (listed in OUTPUT.failed.csv)
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first MAX_LISTED
    below: int = 0  # items below --min-confidence: written, marked, and listed too
    below_names: list[str] = field(default_factory=list)  # the first MAX_LISTED
    retries: int = 0
    seconds: float = 0.0
    output_written: bool = False
    nothing_to_do: bool = False  # --resume over this job's finished output: nothing sent
    failed_file: Path | None = None  # OUTPUT.failed.csv

    @property
    def ok(self) -> bool:
        return not self.failed and not self.below

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every few seconds. No final line: the
    caller prints the one summary line."""

    def __init__(self, total: int, label: str, quiet: bool = False) -> None:
        self.total, self.count, self.failed = total, 0, 0
        self.label = label
        self.start = self.last = time.monotonic()
        self.quiet = quiet
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="item")

    def update(self, ok: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.count += ok + failed + skipped
        self.failed += failed
        if self.bar is not None:
            self.bar.update(ok + failed + skipped)
            if failed:
                self.bar.set_postfix(failed=self.failed)
        elif not self.quiet and time.monotonic() - self.last >= 2.0:
            self.last = time.monotonic()
            elapsed = self.last - self.start
            rate = self.count / elapsed if elapsed else 0.0
            eta = (self.total - self.count) / rate if rate else float("inf")
            print(
                f"{self.label}: {self.count}/{self.total} items "
                f"({100 * self.count / self.total:.0f}%), {rate:.0f} items/s, ETA {eta:.0f}s, "
                f"{self.failed} failed",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FailureLog:
    """`OUTPUT.failed.csv` (name, reason), written as failures happen to a temporary name and
    put in place at the end: the list of this run, or no file when nothing failed."""

    def __init__(self, path: Path, summary: Summary) -> None:
        self.path = path
        self.tmp = tmp_name(path)
        self.summary = summary
        self._file: TextIO | None = None
        self._writer: Any = None

    def _row(self, name: str, reason: str) -> None:
        with naming(self.path):
            if self._file is None:
                self._file = open(self.tmp, "w", newline="")  # noqa: SIM115 (closed in commit)
                self._writer = csv.writer(self._file)
                self._writer.writerow(["name", "reason"])
            self._writer.writerow([name, reason])

    def failed(self, names: list[str], reason: str) -> None:
        s = self.summary
        s.failed += len(names)
        room = MAX_LISTED - len(s.failures)
        s.failures += [(n, reason) for n in names[: max(room, 0)]]
        for n in names:
            self._row(n, reason)

    def below(self, name: str, reason: str) -> None:
        s = self.summary
        s.below += 1
        if len(s.below_names) < MAX_LISTED:
            s.below_names.append(name)
        self._row(name, reason)

    def commit(self) -> None:
        if self._file is None:
            self.path.unlink(missing_ok=True)
            return
        with naming(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.tmp.unlink(missing_ok=True)


async def _send(
    client: AsyncCoordConvClient, task: str, batch: Batch, model: str, version: str | None
) -> np.ndarray:
    if task == "render":
        result = await client.render(batch.payload, model, version)
        shape: tuple[int, ...] = (len(batch), CANVAS, CANVAS)
    else:
        payload = batch.payload
        if isinstance(payload, list):  # PNG paths
            payload = await asyncio.to_thread(read_png_files, payload)
        result = await client.locate_rows(payload, model, version)
        shape = (len(batch), 4)
    if result.shape != shape:
        raise ClientError(0, f"the service answered {result.shape} for {len(batch)} items")
    return result


async def _run_batch(
    client: AsyncCoordConvClient,
    task: str,
    batch: Batch,
    model: str,
    version: str | None,
    sink: Output,
    summary: Summary,
    progress: Progress,
    failures: FailureLog,
) -> None:
    """Send one batch; a 4xx answer about the items is split in halves until the bad items are
    isolated; an answer about the job itself (FATAL: key, model, route) stops everything, and so
    does a service that was never reached."""
    try:
        result = await _send(client, task, batch, model, version)
    except Unreachable:
        raise
    except ClientError as exc:
        if exc.status in FATAL:
            raise JobRefused(exc.status, exc.message) from None
        if 400 <= exc.status < 500 and len(batch) > 1:
            for part in batch.halves():
                await _run_batch(
                    client, task, part, model, version, sink, summary, progress, failures
                )
            return
        failures.failed(batch.names, str(exc))
        progress.update(failed=len(batch))
        return
    await asyncio.to_thread(sink.write, batch, result)
    summary.succeeded += len(batch)
    progress.update(ok=len(batch))


async def run(
    task: str,
    items: Source,
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
    first_contact: float = DEFAULT_FIRST_CONTACT_S,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    min_confidence: float | None = None,
) -> Summary:
    """Run a whole job; returns its summary. Failed items go to `<output>.failed.csv`.
    Raises JobRefused when the service refuses the job itself, Unreachable when it was never
    reached or did not answer its first contact within `first_contact` seconds (before the
    output is touched), InputError when the output is not this job's to write
    (client/outputs.py) or the disk has no room for it. `overwrite` wins over `resume`."""
    model = model or task
    job = {
        "task": task,
        "model": model,
        "version": version,
        "input_sha256": await asyncio.to_thread(items.fingerprint),
        "items": len(items),
        "output": output.suffix.lower() or "dir",
        "min_confidence": min_confidence if task == "locate" else None,
    }
    sink = await asyncio.to_thread(
        open_output, task, output, job, len(items), resume and not overwrite, overwrite
    )
    try:
        return await _run(
            task,
            items,
            sink,
            url=url,
            api_key=api_key,
            model=model,
            version=version,
            batch_size=batch_size,
            concurrency=concurrency,
            retries=retries,
            timeout=timeout,
            retry_window=retry_window,
            first_contact=first_contact,
            quiet=quiet,
            min_confidence=min_confidence if task == "locate" else None,
        )
    finally:
        sink.close()


async def _run(
    task: str,
    items: Source,
    sink: Output,
    *,
    url: str | None,
    api_key: str | None,
    model: str,
    version: str | None,
    batch_size: int,
    concurrency: int,
    retries: int,
    timeout: float,
    retry_window: float,
    first_contact: float,
    quiet: bool,
    min_confidence: float | None,
) -> Summary:
    summary = Summary(total=len(items), failed_file=sink.failed)
    start = time.monotonic()
    if sink.complete:
        summary.skipped = len(items)
        summary.below = sink.below
        summary.nothing_to_do = summary.output_written = True
        return summary
    async with AsyncCoordConvClient(
        url, api_key, timeout, retries, max_connections=concurrency, retry_window=retry_window
    ) as client:
        # Nothing of the output is touched before the service has answered once.
        await client.probe(first_contact)
        failures = FailureLog(sink.failed, summary)
        progress = Progress(len(items), task, quiet)
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * concurrency)

        def count_retry(attempt: int, reason: str) -> None:
            summary.retries += 1

        client.on_retry = count_retry

        async def produce() -> None:
            for batch in items.batches(batch_size):
                keep = sink.pending(batch)
                todo = int(keep.sum())
                if todo < len(batch):
                    summary.skipped += len(batch) - todo
                    progress.update(skipped=len(batch) - todo)
                if todo:
                    await queue.put(batch.take(keep))
                else:
                    await asyncio.sleep(0)
            for _ in range(concurrency):
                await queue.put(None)

        async def work() -> None:
            while (batch := await queue.get()) is not None:
                await _run_batch(
                    client, task, batch, model, version, sink, summary, progress, failures
                )

        try:
            async with asyncio.TaskGroup() as group:  # a refused job cancels the other batches
                group.create_task(produce())
                for _ in range(concurrency):
                    group.create_task(work())
        except* Exception as errors:
            progress.close()
            failures.discard()
            first = [e for e in errors.exceptions if isinstance(e, JobRefused | Unreachable)]
            raise (first or errors.exceptions)[0] from None
    progress.close()
    if summary.failed:
        await asyncio.to_thread(sink.prepare)  # the list of failures belongs to this job
        failures.commit()
    else:
        await asyncio.to_thread(sink.finish, items.iter_names(), min_confidence, failures.below)
        failures.commit()
        summary.output_written = True
        summary.nothing_to_do = summary.skipped == summary.total
    summary.seconds = time.monotonic() - start
    return summary
