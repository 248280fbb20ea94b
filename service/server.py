"""One server process, composed: the model registry, the data plane over it, and the HTTP
(uvicorn) and gRPC front ends side by side on one event loop, with the signals that stop them.

    registry (service/models)  ->  DataPlane (service/dataplane)  ->  HTTP app (service/http)
                                                                  ->  gRPC (service/grpc)

The registry's batchers and model control live on the loop that serves both front ends, so
requests from both join the same batches. SIGTERM: readiness turns false at once (HTTP and gRPC
health), both front ends stop accepting and drain within GRACE_S; shortly before it runs out,
whatever is still queued is answered 503 + Retry-After instead of being cut off.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import socket
import sys
import threading
from typing import Any

import uvicorn

from service.dataplane.plane import DataPlane
from service.errors import RepositoryError
from service.grpc.server import GrpcFrontEnd
from service.http.app import create_app
from service.http.connections import protocol_class, raise_fd_limit
from service.metrics import Metrics
from service.models.registry import ModelRegistry
from service.scaling.cluster import Cluster, WorkerInfo
from service.settings import Settings

log = logging.getLogger("coordconv.serve")
GIL_SWITCH_S = 0.001  # Python's default is 0.005


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: the hardened HTTP protocol (header, body, send and
    keep-alive timeouts, header size and connection limits), no uvicorn concurrency limit (it
    counts connections and would refuse health probes with a bare 503: the app's middleware
    limits requests instead), our logging, and the drain on SIGTERM."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(settings),
        "log_config": None,
        "access_log": False,
        "limit_concurrency": None,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "timeout_graceful_shutdown": math.ceil(settings.grace_s),  # 0: no drain at all
        "server_header": False,
        "lifespan": "on",
        **overrides,
    }
    return uvicorn.Config(app, **options)


class _Http(uvicorn.Server):
    """uvicorn, with SIGTERM starting the whole server's drain, and a drained SIGTERM being a
    clean stop (exit 0 instead of re-raising the signal)."""

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


class Server:
    """`start()` loads the start-up models (RepositoryError: one line for the caller to print),
    `serve()` answers until a signal or `request_exit()`, then drains and stops everything."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket | None = None,
        worker: WorkerInfo | None = None,
        **uvicorn_overrides: Any,
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.registry = ModelRegistry(settings, Metrics())
        self.cluster = None if worker is None else Cluster(worker, self.registry)
        self.plane = DataPlane(settings, self.registry, self.cluster)
        self.grpc: GrpcFrontEnd | None = None
        self.app = create_app(settings, self.plane)
        self.http = _Http(uvicorn_config(self.app, settings, **uvicorn_overrides), self._on_exit)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._grpc_stop: asyncio.Task[None] | None = None
        self._shed: asyncio.TimerHandle | None = None
        self.stopped = threading.Event()

    @property
    def http_port(self) -> int:
        """The bound HTTP port, once serving (settings.port may be 0)."""
        port: int = self.http.servers[0].sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await self.registry.start()
            if self.cluster is not None:
                await self.cluster.start()  # replays the loads and unloads its siblings were given
            if self.settings.grpc_port:
                self.grpc = GrpcFrontEnd(self.plane)
                await self.grpc.start()
        except BaseException:
            await self._close()
            raise

    async def serve(self) -> int:
        """HTTP until asked to stop; then gRPC's drain is awaited and everything is closed."""
        try:
            await self.http.serve(sockets=None if self.sock is None else [self.sock])
        finally:
            self.begin_drain()
            if self._grpc_stop is not None:
                await self._grpc_stop
            await self._close()
        if not self.http.started:
            log.error("the server did not start")
            return 1
        return 0

    def _on_exit(self) -> None:
        """A signal (in the main thread) or request_exit: drain, on the event loop."""
        self.plane.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.begin_drain)

    def request_exit(self) -> None:
        """From any thread: stop as SIGTERM would."""
        self._on_exit()
        self.http.should_exit = True

    def begin_drain(self) -> None:
        """On the event loop: not ready any more; gRPC drains beside HTTP within GRACE_S, and
        what is still queued shortly before GRACE_S runs out is answered 503 + Retry-After."""
        self.plane.draining = True
        if self._shed is not None:  # already draining
            return
        loop = asyncio.get_running_loop()
        if self.grpc is not None:
            self._grpc_stop = loop.create_task(self.grpc.stop(self.settings.grace_s))
        grace = self.settings.grace_s
        self._shed = loop.call_later(max(grace - 1.0, grace * 0.8), self.registry.shed_queued)

    async def _close(self) -> None:
        if self._shed is not None:
            self._shed.cancel()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.registry.stop()
        self.plane.close()
        self.stopped.set()


def serve(
    settings: Settings, sock: socket.socket | None = None, worker: WorkerInfo | None = None
) -> int:
    """`coordconv serve` (or one of `--workers N`, on the supervisor's socket): load the start-up
    models, then serve until SIGTERM or SIGINT. A bad repository is one clear line and exit 1."""
    raise_fd_limit()  # every connection is a file descriptor

    async def main() -> int:
        server = Server(settings, sock, worker)
        try:
            await server.start()
        except RepositoryError as exc:
            print(f"coordconv serve: {exc}", file=sys.stderr)
            return 1
        # What start-up allocated (modules, sessions, the app) lives as long as the process:
        # out of the collector's sight, so its full collections stay short under load.
        gc.collect()
        gc.freeze()
        # A scheduler thread needs the GIL for a moment between onnxruntime calls; with Python's
        # 5 ms switch interval a busy event loop kept it, and the model, waiting (render (b):
        # onnxruntime idle between calls 1.7 -> 0.14 ms on average, +8% items/s).
        sys.setswitchinterval(GIL_SWITCH_S)
        return await server.serve()

    loop_factory = uvicorn_config(None, settings).get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        return 0
