"""Worker processes that answer as one server (`--workers N`).

Each worker has its own onnxruntime sessions and batchers. What must look the same whichever
worker a client reaches goes through a run directory that the supervisor (service/workers.py)
creates for them:

- Model control: a load or unload is appended to `control.jsonl` (under a file lock, which gives
  every operation a sequence number), applied by every worker in that order for the models it
  touches (`touches`: the model, and an ensemble's step models), and answered once every live
  worker has applied it; operations on other models run beside it, so no control call waits
  behind another model's warm-up; a worker that starts later (or is restarted) replays the log
  before it serves, so it serves the same set as its siblings.
- The log holds what was served, never what the disk said: the worker that is asked to load
  picks the versions on the disk of that moment (`ModelControl.plan`) and the entry carries
  them, so every worker, and any replay, loads exactly those (or fails as a load of a version
  gone from disk fails). A load refused before that (no such model, no version to serve, a
  limit) is logged as refused, so every worker reports the same reason. Once worker 0 has
  started, it appends what it serves (`{"op": "start", "served": {name: [versions]}}`, the
  first entry, once per run); a worker that applies it loads, reloads or unloads until it
  serves exactly that, whatever its own start-up found on disk (version folders added or
  removed since); where a version it lists is gone from disk (or no longer loads), the worker
  serves those of the listed versions it can, or none of that model, never another version.
  In poll mode the disk is the source of truth: every worker polls it for
  itself, a restarted worker serves the disk as it is now and its siblings take the same
  changes at their next polls, so no start entry is written.
- Statistics: the worker that is asked sums its own and its siblings' (Triton's statistics
  extension counts requests, so the sum is the server's figure).
- `/metrics`: Prometheus' multiprocess mode (PROMETHEUS_MULTIPROC_DIR under the run directory).

Workers reach each other over a Unix socket each (`w<index>.sock`), one JSON line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import BadRequest, ModelError, NotFound, ServiceError, Unavailable
from service.models import config as model_config
from service.models.control import ModelControl

log = logging.getLogger("coordconv.cluster")

CONTROL_LOG = "control.jsonl"
METRICS_DIR = "metrics"
CATCH_UP_S = 0.5  # a worker that missed a nudge (it was starting) catches up within this
RPC_TIMEOUT_S = 600.0  # a sibling's load can take as long as loading the model


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    count: int
    run_dir: Path

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"w{index}.sock"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


def append_control(run_dir: Path, entry: dict[str, Any], *, first: bool = False) -> int | None:
    """Append one operation to the control log; returns its sequence number (1, 2, ...).
    `first`: only if the log is empty (else None, nothing written)."""
    with open(run_dir / CONTROL_LOG, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            seq = sum(1 for _ in f) + 1
            if first and seq > 1:
                return None
            f.write(json.dumps({**entry, "seq": seq}) + "\n")
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return seq


def read_control(run_dir: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines after byte `offset`, and the offset after them."""
    path = run_dir / CONTROL_LOG
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line being written is taken next time
    return [json.loads(line) for line in data[:end].splitlines() if line], offset + end


class Cluster:
    """One worker's part: it follows the control log and answers its siblings."""

    def __init__(self, info: WorkerInfo, control: ModelControl) -> None:
        self.info = info
        self.models = control  # this worker's model control (and its registry)
        self.results: dict[int, dict[str, Any] | None] = {}  # seq -> error (status, message)
        self._offset = 0
        self._lock = asyncio.Lock()
        # Entries being applied: seq -> its task; model -> the last entry that touches it; the
        # last entry that everything after it waits for (a start entry).
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._barrier: asyncio.Task[None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._follow: asyncio.Task[None] | None = None
        self._parent = os.getppid()

    @property
    def index(self) -> int:
        return self.info.index

    async def start(self) -> None:
        """Replay the control log (what the siblings were told before this worker started),
        then listen for them. Worker 0's first start writes the start entry (what it serves)."""
        await self.settle()
        if self.index == 0 and self.models.mode != "poll":
            await asyncio.to_thread(
                append_control,
                self.info.run_dir,
                {"op": "start", "served": self._served()},
                first=True,  # a restarted worker 0 replays the one its first start wrote
            )
            await self.settle()
        path = self.info.socket_path(self.info.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a crashed predecessor's
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))
        self._follow = asyncio.get_running_loop().create_task(self._follow_log())

    async def stop(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.info.socket_path(self.info.index).unlink()

    # Model control

    async def control(self, entry: dict[str, Any]) -> None:
        """Apply a load or unload on every worker; raises what this worker's attempt raised, or
        a sibling's failure. A load is given the versions to load here, from today's disk."""
        load = entry["op"] == "load"
        entry = await self._plan(entry) if load else {**entry, "touches": [entry["name"]]}
        seq = await asyncio.to_thread(append_control, self.info.run_dir, entry)
        assert seq is not None
        await self.applied(seq)
        own = self.results.get(seq)
        replies = await asyncio.gather(
            *(self._ask(i, {"op": "sync", "seq": seq}) for i in self.info.siblings)
        )
        if own is not None:
            raise _error(own)
        for i, reply in zip(self.info.siblings, replies, strict=True):
            if reply is not None and (err := reply.get("error")):
                raise _error({**err, "message": f"worker {i}: {err['message']}"})

    async def catch_up(self) -> None:
        """Start applying the entries appended since the last look (`_schedule`)."""
        async with self._lock:
            entries, self._offset = await asyncio.to_thread(
                read_control, self.info.run_dir, self._offset
            )
            for entry in entries:
                self._schedule(entry)

    async def applied(self, seq: int) -> None:
        """Return once entry `seq` (appended already) has been applied here."""
        await self.catch_up()
        task = self._pending.get(seq)
        if task is not None:
            await asyncio.shield(task)

    async def settle(self) -> None:
        """Return once every entry appended so far has been applied here."""
        await self.catch_up()
        if self._pending:
            await asyncio.wait([asyncio.shield(t) for t in self._pending.values()])

    def _schedule(self, entry: dict[str, Any]) -> None:
        """Apply `entry` after the entries before it that touch the same models; a start entry
        (or one from before `touches` existed) after all of them, and everything after it
        waits for it."""
        seq = entry["seq"]
        touches: list[str] = list(entry.get("touches") or [])
        barrier = entry["op"] == "start" or not touches
        if barrier:
            before = list(self._pending.values())
        else:
            before = [self._tails[n] for n in touches if n in self._tails]
            if self._barrier is not None:
                before.append(self._barrier)

        async def apply() -> None:
            if before:
                await asyncio.wait(before)
            self.results[seq] = await self._apply(entry)

        task = asyncio.get_running_loop().create_task(apply())
        self._pending[seq] = task
        if barrier:
            self._barrier = task
            self._tails.clear()
        else:
            for name in touches:
                self._tails[name] = task

        def done(t: asyncio.Task[None]) -> None:
            self._pending.pop(seq, None)
            if self._barrier is t:
                self._barrier = None
            for name in [n for n, tail in self._tails.items() if tail is t]:
                del self._tails[name]

        task.add_done_callback(done)

    async def _plan(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A load entry with the versions a load would serve now; one that cannot be served
        carries the refusal instead (every worker reports it alike)."""
        name = entry["name"]
        try:
            versions = await self.models.plan(name, _config(entry))
        except Exception as exc:
            failed = str(exc) if isinstance(exc, ModelError | NotFound) else None
            if failed is not None:
                log.error("load of %s refused, serving set unchanged: %s", name, exc)
            return {
                **entry,
                "versions": None,
                "refused": _outcome(entry, exc),
                "failed": failed,
                "touches": [name],
            }
        touches = await self.models.touches(name, _config(entry))
        return {**entry, "versions": versions, "touches": touches}

    async def _apply(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        try:
            if entry["op"] == "start":
                await self._converge(entry["served"])
            elif entry["op"] == "load":
                if entry.get("refused") is not None:
                    if entry.get("failed") is not None:  # as a refused load records it
                        self.models.failed[entry["name"]] = entry["failed"]
                    refused: dict[str, Any] = entry["refused"]
                    return refused
                await self.models.load(
                    entry["name"], _config(entry), versions=entry.get("versions")
                )
            else:
                await self.models.unload(entry["name"])
        except Exception as exc:  # never let one operation stop the follower
            return _outcome(entry, exc)
        return None

    async def _converge(self, served: dict[str, list[int]]) -> None:
        """Serve exactly `served` (the start entry): what worker 0 found at its start."""
        for name in sorted(set(self.models.registry.versions) - set(served)):
            log.warning("unloading %s: the other workers do not serve it", name)
            with contextlib.suppress(NotFound):
                await self.models.unload(name)
        for name, versions in sorted(served.items()):
            if self._served().get(name) == sorted(versions):
                continue
            try:
                await self.models.load(name, versions=versions)
                continue
            except (ModelError, NotFound, BadRequest) as exc:
                problem = str(exc)
            # Never a version the others do not serve: those of theirs still on disk, or none.
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.models.scan(name)
                left = sorted(set(versions) & set(files.versions))
                if left and left != self._served().get(name):
                    await self.models.load(name, versions=left)
            now = self._served().get(name)
            if now is not None and not set(now) <= set(versions):
                with contextlib.suppress(NotFound):
                    await self.models.unload(name)
                now = None
            log.error(
                "cannot serve %s versions %s as the other workers do (%s); serving %s",
                name,
                versions,
                problem,
                f"versions {now}" if now else "none of it",
            )

    def _served(self) -> dict[str, list[int]]:
        served = self.models.registry.versions
        return {name: sorted(map(int, vs)) for name, vs in served.items()}

    async def _follow_log(self) -> None:
        while True:
            await asyncio.sleep(CATCH_UP_S)
            if os.getppid() != self._parent:  # the supervisor was killed: do not serve orphaned
                log.error("the supervisor is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                await self.catch_up()
            except Exception:
                log.exception("following the control log failed")

    # Statistics

    async def statistics(self, name: str | None, version: str | None) -> list[list[dict[str, Any]]]:
        """The siblings' `model_stats` lists (a sibling that is not up is left out)."""
        replies = await asyncio.gather(
            *(
                self._ask(i, {"op": "stats", "name": name, "version": version}, timeout=5)
                for i in self.info.siblings
            )
        )
        return [r["stats"] for r in replies if r is not None and "stats" in r]

    # Worker to worker

    async def _ask(
        self, index: int, message: dict[str, Any], timeout: float = RPC_TIMEOUT_S
    ) -> dict[str, Any] | None:
        """One request to sibling `index`; None when it is not up (it replays when it starts)."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.info.socket_path(index)))
        except OSError:
            return None
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
            reply: dict[str, Any] | None = json.loads(line) if line else None
            return reply
        except (OSError, TimeoutError, ValueError):
            log.warning("worker %d did not answer %s", index, message.get("op"))
            return None
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = json.loads(await reader.readline())
            reply: dict[str, Any]
            if message["op"] == "sync":
                await self.applied(message["seq"])
                reply = {"error": self.results.get(message["seq"])}
            elif message["op"] == "stats":
                registry = self.models.registry
                try:
                    reply = {"stats": registry.statistics(message["name"], message["version"])}
                except ServiceError:
                    reply = {"stats": []}
            else:
                reply = {}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            writer.close()


def _config(entry: dict[str, Any]) -> model_config.ModelConfig | None:
    text = entry.get("config")
    if text is None:
        return None
    return model_config.parse_json(text, f"model {entry['name']}: config parameter")


def _outcome(entry: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """What a failed operation answers (status, message), as one process would."""
    name = entry.get("name")
    if isinstance(exc, ModelError):
        return {"status": 400, "message": f"failed to load {name!r}: {exc}"}
    if isinstance(exc, ServiceError):
        return {"status": exc.status_code, "message": exc.message}
    log.error("control operation %s failed", entry, exc_info=exc)
    return {"status": 500, "message": f"{entry['op']} {name!r} failed: {exc}"}


def _error(err: dict[str, Any]) -> ServiceError:
    cls = {400: BadRequest, 404: NotFound, 503: Unavailable}.get(err["status"], ServiceError)
    exc = cls(err["message"])  # 503: with Retry-After, as one process answers
    exc.status_code = err["status"]
    return exc
