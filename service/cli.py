"""`coordconv serve`: every setting is an option (and a COORDCONV_* environment variable).

Start-up problems (a bad model repository, a port in use, no GPU with REQUIRE_GPU) print one clear
line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import math
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.settings import Settings

if TYPE_CHECKING:
    from service.scaling.cluster import WorkerInfo

GIL_SWITCH_S = 0.001  # Python's default is 0.005
LOG_FIELDS = (
    "request_id",
    "protocol",
    "status",
    "path",
    "method",
    "duration_ms",
    "model",
    "version",
    "worker",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [
            f"{k}={getattr(record, k)}"
            for k in ("worker", "request_id")
            if getattr(record, k, "") != ""
        ]
        return f"{text} [{' '.join(tags)}]" if tags else text


def configure_logging(level: str, fmt: str, worker: int | None = None) -> None:
    """One handler on stderr, text or JSON; with `worker`, each line names the worker process."""
    handler = logging.StreamHandler(sys.stderr)
    if worker is not None:

        def tag(record: logging.LogRecord) -> bool:
            record.worker = worker
            return True

        handler.addFilter(tag)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coordconv serve",
        description="Serve the model repository over HTTP. Each option is also an environment "
        "variable COORDCONV_<NAME>; options win.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        helptext = f"{field.description or name} (env COORDCONV_{name.upper()}, default {default})"
        if field.annotation is bool:  # --flag, --flag false, --no-flag
            p.add_argument(
                flag,
                dest=name,
                nargs="?",
                const="true",
                default=None,
                metavar="true|false",
                help=helptext,
            )
            p.add_argument(
                "--no-" + flag[2:],
                dest=name,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        elif name == "load_model":
            p.add_argument(
                flag,
                dest=name,
                action="append",
                default=None,
                metavar="NAME",
                help=f"{field.description} (env COORDCONV_LOAD_MODEL, comma-separated)",
            )
        else:
            p.add_argument(flag, dest=name, default=None, help=helptext, metavar=name.upper())
    ray = p.add_argument_group("Ray Serve (pip install 'coordconv[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve, several replicas")
    ray.add_argument("--ray-replicas", type=int, default=2, help="replicas (default 2)")
    ray.add_argument("--ray-num-cpus", type=float, default=0.5, help="CPUs per replica")
    ray.add_argument(
        "--ray-autoscale-max",
        type=int,
        default=None,
        help="autoscale between 1 and this many replicas instead",
    )
    return p


def _port_free(host: str, port: int) -> str | None:
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("ray")}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"coordconv serve: invalid setting {loc}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    problem = _port_free(settings.host, settings.port)
    if not problem and settings.grpc_port:
        problem = _port_free(settings.host, settings.grpc_port)
        problem = problem and f"gRPC: {problem} (--grpc-port 0 switches gRPC off)"
    if problem:
        print(f"coordconv serve: {problem}", file=sys.stderr)
        return 1
    if args.ray and settings.workers > 1:
        print(
            "coordconv serve: --ray runs replicas instead of --workers; pick one", file=sys.stderr
        )
        return 2
    if args.ray:
        try:
            from service.scaling import ray_serve
        except ImportError:
            print(
                "coordconv serve --ray: install the ray extra: pip install 'coordconv[ray]'",
                file=sys.stderr,
            )
            return 2
        return ray_serve.run(settings, args.ray_replicas, args.ray_num_cpus, args.ray_autoscale_max)
    if settings.workers > 1:
        from service.scaling import workers

        return workers.run(settings)
    return serve(settings)


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> Any:
    """uvicorn's configuration for the app: the hardened HTTP protocol (header, body, send and
    keep-alive timeouts, header size and connection limits), no uvicorn concurrency limit (it
    counts connections and would refuse health probes with a bare 503: the app's middleware
    limits requests instead), our logging, and the drain on SIGTERM."""
    import uvicorn

    from service.http.connections import protocol_class

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


def serve(
    settings: Settings, sock: socket.socket | None = None, worker: WorkerInfo | None = None
) -> int:
    """Load the start-up models, then serve HTTP and gRPC, all on one event loop: the registry's
    batchers and model control live on the loop that serves both front ends. A bad repository
    is one clear line and exit 1 (inside the app's lifespan it would be uvicorn's traceback).
    `sock` and `worker`: this process is one of `--workers N`, on the supervisor's socket."""
    import asyncio

    import uvicorn

    from service.errors import RepositoryError
    from service.http.app import create_app
    from service.http.connections import raise_fd_limit
    from service.metrics import Metrics
    from service.models.registry import ModelRegistry
    from service.scaling.cluster import Cluster

    raise_fd_limit()  # every connection is a file descriptor
    config = uvicorn_config("service.http.app:create_app", settings)  # the app is set below

    async def main() -> int:
        registry = ModelRegistry(settings, Metrics())
        cluster = None if worker is None else Cluster(worker, registry)
        try:
            await registry.start()
            if cluster is not None:
                await cluster.start()  # replays the loads and unloads its siblings were given
        except RepositoryError as exc:
            await registry.stop()
            print(f"coordconv serve: {exc}", file=sys.stderr)
            return 1
        app = create_app(settings, registry=registry, cluster=cluster)
        # What start-up allocated (modules, sessions, the app) lives as long as the process:
        # out of the collector's sight, so its full collections stay short under load.
        gc.collect()
        gc.freeze()
        # A scheduler thread needs the GIL for a moment between onnxruntime calls; with Python's
        # 5 ms switch interval a busy event loop kept it, and the model, waiting (render (b):
        # onnxruntime idle between calls 1.7 -> 0.14 ms on average, +8% items/s).
        sys.setswitchinterval(GIL_SWITCH_S)
        config.app = app
        state = app.state.service
        loop = asyncio.get_running_loop()

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # /readyz answers 503 and gRPC drains beside HTTP's in-flight requests.
                state.accepting = False
                loop.call_soon_threadsafe(state.begin_drain)
                super().handle_exit(sig, frame)
                # A drained SIGTERM is a clean stop: exit 0 instead of re-raising the signal.
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

        server = _Server(config)
        try:
            await server.serve(sockets=None if sock is None else [sock])
        finally:
            if cluster is not None:
                await cluster.stop()
            await registry.stop()
        if not server.started:
            logging.getLogger("coordconv.serve").error("the server did not start")
            return 1
        return 0

    loop_factory = config.get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        return 0
