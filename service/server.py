"""One server process, composed: the model registry, the data plane over it, and the HTTP
(uvicorn) and gRPC front ends side by side on one event loop, with the signals that stop them.

    registry (service/models)  ->  DataPlane (service/dataplane)  ->  HTTP app (service/http)
                                                                  ->  gRPC (service/grpc)

The registry's batchers and model control live on the loop that serves both front ends, so
requests from both join the same batches. SIGTERM: readiness turns false at once (HTTP /readyz
and /v2/health/ready, gRPC ServerReady and its health service) while both front ends keep
accepting and answering for DRAIN_DELAY_S (load balancers take a while to stop routing to a
terminating process; meanwhile every HTTP answer says `Connection: close`, so keep-alive clients
reconnect to wherever the balancer now sends them); then both stop accepting and drain within
GRACE_S; shortly before it runs out, whatever is still queued is answered 503 + Retry-After
instead of being cut off. A second signal, or SIGINT, skips what is left of the delay.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import math
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.dataplane.auth import KeyRing
from service.dataplane.plane import DataPlane
from service.errors import RepositoryError, Unavailable
from service.grpc.server import GrpcFrontEnd, GrpcListenError
from service.http.app import create_app
from service.http.connections import protocol_class, raise_fd_limit
from service.http.listeners import close_gently
from service.lifecycle import Lifecycle
from service.metrics import tracing
from service.scaling.cluster import Cluster, WorkerInfo
from service.settings import Settings

log = logging.getLogger("coordconv.serve")
GIL_SWITCH_S = 0.001  # Python's default is 0.005


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: the hardened HTTP protocol (header, body, send and
    keep-alive timeouts, header size and connection limits), no uvicorn concurrency limit (it
    counts connections and would refuse health probes with a bare 503: the app's middleware
    limits requests instead), our logging, TLS from the settings' files, and the drain on
    SIGTERM."""
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
        **tls_options(settings),
        **overrides,
    }
    return uvicorn.Config(app, **options)


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ssl options: HTTPS from TLS_CERT_FILE and TLS_KEY_FILE, and client
    certificates signed by TLS_CLIENT_CA_FILE required (the handshake fails without one)."""
    if settings.tls_cert_file is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": None if settings.tls_key_file is None else str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def tls_problem(settings: Settings, now: datetime.datetime | None = None) -> str | None:
    """One line if the TLS files cannot be used (a certificate and key that do not belong
    together, a file that is not PEM, a certificate expired or not yet valid: clients would
    refuse every connection), before anything listens."""
    if settings.tls_cert_file is None:
        return None
    for setting, path in (
        ("TLS_CERT_FILE", settings.tls_cert_file),
        ("TLS_CLIENT_CA_FILE", settings.tls_client_ca_file),
    ):
        if path is not None and (problem := _validity(path, now)):
            return f"{setting} {problem}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        return f"TLS_CERT_FILE / TLS_KEY_FILE cannot be used: {exc.strerror or exc}"
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(settings.tls_client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            return f"TLS_CLIENT_CA_FILE cannot be used: {exc.strerror or exc}"
    return None


def _validity(path: Path, now: datetime.datetime | None) -> str | None:
    """Why the first certificate of a PEM file is not valid at `now` (default: now), or None
    (also for a file that is not PEM: loading it says why)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError):
        return None
    at = now or datetime.datetime.now(datetime.UTC)
    stamp = "%Y-%m-%d %H:%M UTC"
    if at > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:{stamp}} (notAfter); renew it"
    if at < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:{stamp}} (notBefore)"
    return None


class _CloseWhenDraining:
    """Once the server is draining, every HTTP answer says `Connection: close`: a keep-alive
    client reconnects, through its load balancer, to a process that is not going away, instead
    of sending its next request on a connection that the end of DRAIN_DELAY_S closes. Before
    that, one attribute read per request."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.lifecycle.draining or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, closing)


class _Http(uvicorn.Server):
    """uvicorn, with SIGTERM starting the whole server's drain (after DRAIN_DELAY_S, when
    `on_signal` says the stop waits), and a drained SIGTERM being a clean stop (exit 0 instead
    of re-raising the signal)."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], bool]) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.on_signal(sig):  # still serving for DRAIN_DELAY_S; `should_exit` comes later
            return
        super().handle_exit(sig, frame)
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # What the kernel accepted is answered, not reset by the listener's close.
        grace = self.config.timeout_graceful_shutdown or 0
        await close_gently(self.servers, min(1.0, grace / 4))
        await super().shutdown(sockets)


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
        # Every way out ends within DRAIN_DELAY_S + GRACE_S of the first stop request.
        self.lifecycle = Lifecycle(settings.drain_delay_s + settings.grace_s)
        self.plane = DataPlane.build(settings, self.lifecycle)
        self.registry = self.plane.registry
        self.cluster = None if worker is None else Cluster(worker, self.plane.control)
        self.plane.siblings = self.cluster
        self.grpc: GrpcFrontEnd | None = None
        self.app = create_app(settings, self.plane)
        asgi = _CloseWhenDraining(self.app, self.lifecycle)
        self.http = _Http(uvicorn_config(asgi, settings, **uvicorn_overrides), self._on_signal)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._grpc_stop: asyncio.Task[None] | None = None
        self._shed: asyncio.TimerHandle | None = None
        self._delaying = False  # SIGTERM came: serving on, not ready, for DRAIN_DELAY_S
        self._delay: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = threading.Event()

    def time_left(self) -> float:
        return self.lifecycle.time_left()

    def interrupt_start(self, sig: int) -> None:
        """A signal before the server serves (from the main thread, while models load): what
        is loading stops between two warm-up runs, and serving stops as soon as it begins."""
        self.lifecycle.stop()
        self.http.should_exit = True

    @property
    def http_port(self) -> int:
        """The bound HTTP port, once serving (settings.port may be 0)."""
        port: int = self.http.servers[0].sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        warning = KeyRing.of(self.settings.api_key, self.settings.admin_api_key).warning
        if warning and (self.cluster is None or self.cluster.index == 0):  # one line
            log.warning(warning)
        try:
            await self.plane.control.start()
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

    def _on_signal(self, sig: int) -> bool:
        """uvicorn's signal handler (the main thread, which runs the event loop): not ready at
        once. The first SIGTERM with DRAIN_DELAY_S keeps serving that long, then drains (True:
        uvicorn is told to stop later); SIGINT or a second signal drains now (False)."""
        self.lifecycle.stop()
        loop = self.loop
        if loop is None:
            return False
        delay = self.settings.drain_delay_s
        if sig == signal.SIGTERM and delay > 0 and not self._delaying and not self.http.should_exit:
            self._delaying = True
            loop.call_soon_threadsafe(self._start_delay, delay)
            return True
        loop.call_soon_threadsafe(self.begin_drain)
        return False

    def _start_delay(self, delay: float) -> None:
        """On the event loop: gRPC's health turns NOT_SERVING beside HTTP's readiness; both
        front ends answer on for `delay` seconds, then drain."""
        log.info(
            "SIGTERM: not ready; serving on for DRAIN_DELAY_S=%g s, then draining (GRACE_S=%g s)",
            delay,
            self.settings.grace_s,
        )
        loop = asyncio.get_running_loop()
        if self.grpc is not None:
            task = loop.create_task(self.grpc.set_serving(False))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._shed is None:  # not draining already (a second signal came first)
            self._delay = loop.call_later(delay, self._end_delay)

    def _end_delay(self) -> None:
        self._delay = None
        self.http.should_exit = True
        self.begin_drain()

    def request_exit(self) -> None:
        """From any thread: stop as SIGINT would (at once, no DRAIN_DELAY_S)."""
        self.lifecycle.stop()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.begin_drain)
        self.http.should_exit = True

    def begin_drain(self) -> None:
        """On the event loop: not ready any more, and no longer accepting: gRPC drains beside
        HTTP within GRACE_S, and what is still queued shortly before GRACE_S runs out is
        answered 503 + Retry-After."""
        self.lifecycle.stop()
        if self._delay is not None:  # a second signal during DRAIN_DELAY_S: now
            self._delay.cancel()
            self._delay = None
        if self._shed is not None:  # already draining
            return
        loop = asyncio.get_running_loop()
        if self.grpc is not None:
            self._grpc_stop = loop.create_task(self.grpc.stop(self.settings.grace_s))
        grace = self.settings.grace_s
        self._shed = loop.call_later(max(grace - 1.0, grace * 0.8), self.registry.shed_queued)

    async def close(self) -> None:
        """Stop what `start` started (for a server that never served)."""
        await self._close()

    async def _close(self) -> None:
        if self._shed is not None:
            self._shed.cancel()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.plane.control.stop()
        self.plane.close()
        self.stopped.set()


def serve(
    settings: Settings, sock: socket.socket | None = None, worker: WorkerInfo | None = None
) -> int:
    """`coordconv serve` (or one of `--workers N`, on the supervisor's socket): load the start-up
    models, then serve until SIGTERM or SIGINT. A bad repository is one clear line and exit 1."""
    raise_fd_limit()  # every connection is a file descriptor
    problem = tls_problem(settings)
    if problem:
        print(f"coordconv serve: {problem}", file=sys.stderr)
        return 1

    async def main() -> int:
        server = Server(settings, sock, worker)
        server.loop = asyncio.get_running_loop()
        signals: list[int] = []

        def on_signal(sig: int, frame: Any) -> None:  # until uvicorn takes the signals over
            signals.append(sig)
            server.interrupt_start(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        started = False
        try:
            await server.start()  # on a failure it has closed what it started
            started = True
        except (RepositoryError, GrpcListenError) as exc:
            if not signals:
                print(f"coordconv serve: {exc}", file=sys.stderr)
                return 1
        except Unavailable:  # a load cancelled by the signal
            if not signals:
                raise
        if signals:
            if started:
                await server.close()
            name = signal.Signals(signals[0]).name
            line = f"stopped by {name} while loading models, before serving"
            if worker is None:
                print(f"coordconv serve: {line}", file=sys.stderr)
            else:  # the supervisor says it once for every worker
                log.info("worker %d: %s", worker.index, line)
            return 0
        # What start-up allocated (modules, sessions, the app) lives as long as the process:
        # out of the collector's sight, so its full collections stay short under load.
        gc.collect()
        gc.freeze()
        # A scheduler thread needs the GIL for a moment between onnxruntime calls; with Python's
        # 5 ms switch interval a busy event loop kept it, and the model, waiting (render (b):
        # onnxruntime idle between calls 1.7 -> 0.14 ms on average, +8% items/s).
        sys.setswitchinterval(GIL_SWITCH_S)
        code = await server.serve()
        # The exporter's last flush gets what is left of the drain's time, not the SDK's 30 s.
        await asyncio.to_thread(tracing.shutdown, server.time_left())
        return code

    loop_factory = uvicorn_config(None, settings).get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        return 0
