"""What the tests share: paths and free ports, one `wait_for`, small model repositories, the two
ways to run a server (`LiveServer`, the whole server in a thread of the test process, and
`ServeProcess`, `coordconv serve` as a process), and PNG and NPY bytes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

# One SSL context for the tests' clients: httpx builds a new one for every client by default
# (about 40 ms of CPU: the CA bundle read again), and a run of the parallel pass made 1,327 of
# them (87 s of CPU), most in the readiness probes (every 20-50 ms while a server starts), for
# servers that speak plain HTTP. `verify=TLS` on every client the tests make.
TLS = httpx.create_ssl_context()

# Settings that only decide where a model's config.pbtxt is silent (README: Model repository).
SCHEDULING = {"max_batch_size", "max_queue_delay_us", "max_queue_size", "request_timeout_s"}


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port free now, for a server the test starts next, below the kernel's range of local
    ports for outgoing connections: the server binds it seconds later, and meanwhile any
    connection the tests open could take a port of that range (a worker's gRPC port once was
    taken so, between the pick and the bind)."""
    low = _ephemeral_low()
    pick = random.SystemRandom()  # not the `random` that tests seed
    for _ in range(100):
        port = pick.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise AssertionError("no free port below the local-port range after 100 tries")


def wait_for(condition: Callable[[], object], timeout: float = 30, interval: float = 0.02) -> float:
    """Poll `condition` until it holds (the event the test waits for); the seconds it took. An
    AssertionError after `timeout` seconds, or whatever `condition` raises (a process that died,
    say) at once."""
    start = time.monotonic()
    while not condition():
        waited = time.monotonic() - start
        assert waited < timeout, f"timed out after {waited:.1f} s"
        time.sleep(interval)
    return time.monotonic() - start


def repository(
    root: Path | None = None, models: Iterable[str] | None = None, silent: bool = False
) -> Path:
    """A copy of the shipped models at `root` (a new temporary folder when None): those named in
    `models` (every one when None); with `silent`, configs that leave batching to the settings
    (max_batch_size and dynamic_batching removed, served with STRICT_MODEL_CONFIG=false as
    Triton auto-completes)."""
    root = Path(tempfile.mkdtemp(prefix="models-")) if root is None else root
    names = (
        sorted(p.name for p in MODELS.iterdir() if p.is_dir()) if models is None else list(models)
    )
    for name in names:
        shutil.copytree(MODELS / name, root / name, dirs_exist_ok=True)
        config = root / name / "config.pbtxt"
        if silent and config.exists():
            from google.protobuf import text_format

            from service.models.config import parse_text

            parsed = parse_text(config.read_text(), "config")
            parsed.max_batch_size = 0
            parsed.ClearField("dynamic_batching")
            config.write_text(str(text_format.MessageToString(parsed)))
    return root


def ready(url: str) -> bool:
    """/readyz answers 200 (False while nothing listens)."""
    try:
        return httpx.get(url + "/readyz", timeout=1, verify=TLS).status_code == 200
    except httpx.TransportError:
        return False


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` on `url`/metrics whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10, verify=TLS).text.splitlines():
        series, _, value = line.rpartition(" ")
        family, _, rest = series.partition("{")
        if family == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


class LiveServer:
    """The whole server (service/server.py: registry, data plane, HTTP and gRPC) running in a
    thread on its own event loop, on 127.0.0.1 and free ports. `models` names the shipped models
    to serve (a copy of just those: it starts in a fraction of the time of all seven and the
    ensemble); with scheduling settings, a copy whose configs leave those to settings."""

    def __init__(self, models: Iterable[str] | None = None, **overrides: Any) -> None:
        from service.logs import configure_logging
        from service.server import Server
        from service.settings import Settings

        silent = bool(SCHEDULING & set(overrides))
        self.own_repository: Path | None = None  # a copy made here, removed on exit
        if "model_dir" not in overrides and (silent or models is not None):
            self.own_repository = overrides["model_dir"] = repository(models=models, silent=silent)
        if silent:
            # Not strict: a max_batch_size of 0 is filled in from the settings (Triton's
            # auto-complete) instead of meaning "does not batch".
            overrides.setdefault("strict_model_config", False)
        overrides.setdefault("model_dir", MODELS)
        overrides.setdefault("grpc_port", free_port())
        overrides.setdefault("port", 0)
        self.settings = Settings(**overrides)
        self.grpc_port = self.settings.grpc_port
        configure_logging("warning", "text")
        self.server = Server(self.settings, host="127.0.0.1", timeout_graceful_shutdown=1)
        self.app = self.server.app
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            await self.server.start()
            await self.server.serve()

        # The loop production runs on (uvloop, through uvicorn's loop factory).
        factory = self.server.http.config.get_loop_factory()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        except BaseException as exc:  # the test that started it reports it
            self.failure = exc

    def _started(self) -> bool:
        if not self.thread.is_alive():
            raise RuntimeError(f"server did not start: {self.failure!r}")
        return bool(self.server.http.started)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(self._started, timeout=30)
        self.port = self.server.http_port
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.request_exit()
        self.thread.join(timeout=10)
        if self.own_repository is not None:
            shutil.rmtree(self.own_repository, ignore_errors=True)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, verify=TLS, **kwargs)


@contextlib.contextmanager
def live_server(models: Iterable[str] | None = None, **overrides: Any) -> Iterator[LiveServer]:
    with LiveServer(models, **overrides) as live:
        yield live


class ServeProcess:
    """`coordconv serve` as a process on free ports (`port`, `grpc_port`): options `args`,
    `settings` as environment (COORDCONV_<NAME>; OTEL_* names as they are), `env` last, as given.
    `models` serves a copy of just those shipped models; scheduling settings, a copy whose
    configs leave them to settings. Its
    output is always read as it comes (`lines`, `wait_line`: a test waits for a line instead of
    sleeping; `all_output` once it has exited): an unread pipe fills after about 340 access-log
    lines and blocks the server's writes, which hangs every request."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        settings: Mapping[str, object] | None = None,
        models: Iterable[str] | None = None,
    ) -> None:
        settings = settings or {}
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "COORDCONV_PORT": str(self.port),
            "COORDCONV_GRPC_PORT": str(self.grpc_port),
            "COORDCONV_LOG_LEVEL": "info",
        }
        self.own_repository: Path | None = None  # a copy made here, removed once it has exited
        silent = bool(SCHEDULING & set(settings))
        if (silent or models is not None) and "model_dir" not in settings:
            self.own_repository = repository(models=models, silent=silent)
            environ["COORDCONV_MODEL_DIR"] = str(self.own_repository)
        if silent and "model_dir" not in settings:
            environ["COORDCONV_STRICT_MODEL_CONFIG"] = "false"  # max_batch_size 0: the settings'
        for key, value in settings.items():
            environ[key if key.startswith("OTEL_") else f"COORDCONV_{key.upper()}"] = str(value)
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordconv", "serve", *args],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    def wait_line(self, text: str, timeout: float = 120) -> None:
        with self._new:
            ok = self._new.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        assert ok and any(text in line for line in self.lines), (text, self.output)

    def _ready(self) -> bool:
        if ready(self.url):
            return True
        assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.output}"
        return False

    def wait_ready(self, timeout: float = 120) -> float:
        """/readyz 200; the seconds it took."""
        return wait_for(self._ready, timeout, interval=0.05)

    def terminate(self, timeout: float = 120) -> tuple[int, float]:
        """SIGTERM; (the exit status, the seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"running {timeout} s after SIGTERM: {self.output}") from None
        self._reader.join(timeout=10)
        self._remove_repository()
        return code, time.monotonic() - start

    @property
    def output(self) -> str:
        """The last 40 lines read so far."""
        with self._new:
            return "\n".join(self.lines[-40:])

    def all_output(self, timeout: float = 10) -> str:
        """Everything it wrote, once it has exited (waits for the reader to reach the end)."""
        self._reader.join(timeout=timeout)
        with self._new:
            return "\n".join(self.lines)

    def close(self, timeout: float = 40) -> None:
        """SIGTERM if it still runs (a supervisor removes its run directory), killed if it has not
        exited within `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._remove_repository()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._remove_repository()

    def _remove_repository(self) -> None:
        if self.own_repository is not None and self.proc.poll() is not None:
            shutil.rmtree(self.own_repository, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Workers(ServeProcess):
    """`coordconv serve --workers count` (options `args`), logging warnings."""

    def __init__(self, *args: str, count: int = 2) -> None:
        super().__init__("--workers", str(count), *args, settings={"log_level": "warning"})
        self.count = count

    def by_worker(self, limit: float = 60) -> dict[int, httpx.Client]:
        """A keep-alive client held by each ready worker (new connections until every worker
        took one and said ready: /healthz answers while a worker still loads its start-up models,
        and a test that changes the repository then would race that load); the key is the worker
        that answers on that connection, asked again once all are found: a connection left idle
        past the keep-alive timeout (a sibling slow to start) is closed by its worker, and the
        client's next request may open one to another worker."""
        found: dict[int, httpx.Client] = {}
        spare: list[httpx.Client] = []
        deadline = time.monotonic() + limit
        while len(found) < self.count or self._moved(found):
            assert time.monotonic() < deadline, f"reached workers {sorted(found)} only"
            assert self.proc.poll() is None, self.output
            c = httpx.Client(base_url=self.url, timeout=60, verify=TLS)
            try:
                worker = c.get("/healthz").json()["worker"]
                ready = c.get("/readyz").status_code == 200
            except httpx.TransportError:
                c.close()
                time.sleep(0.1)  # not listening yet
                continue
            if not ready and worker not in found:
                c.close()
                time.sleep(0.05)  # still loading: ask again
                continue
            if worker in found:
                spare.append(c)  # keep it open so that the next connection goes elsewhere
            else:
                found[worker] = c
        for c in spare:
            c.close()
        return found

    @staticmethod
    def _moved(found: dict[int, httpx.Client]) -> bool:
        """Drops (and closes) the clients that now reach another worker than their key; True if
        there were any."""
        moved = [w for w, c in found.items() if c.get("/healthz").json()["worker"] != w]
        for w in moved:
            found.pop(w).close()
        return bool(moved)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=40)
        return self.proc.returncode, self.all_output()


@contextlib.contextmanager
def serve_process(
    models: Iterable[str] | None = None, **settings: object
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`coordconv serve` with `settings`, ready: (the process, its URL); its gRPC port on
    `proc.grpc_port`, all its output from `proc.all_output()` once it has exited. Killed on the
    way out. `models`: a copy of just those shipped models (all of them when None)."""
    p = ServeProcess(settings=settings, models=models)
    p.proc.grpc_port = p.grpc_port  # type: ignore[attr-defined]
    p.proc.all_output = p.all_output  # type: ignore[attr-defined]
    try:
        p.wait_ready(timeout=30)
        yield p.proc, p.url
    finally:
        p.kill()


# -- request bodies -------------------------------------------------------------------------------


def png_bytes(image: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    if mode == "L":
        Image.fromarray(np.rint(image * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    elif mode == "I;16":
        Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(buf, "PNG")
    elif mode == "RGB":
        g = np.rint(image * 255).astype(np.uint8)
        Image.fromarray(np.stack([g, g, g], -1), mode="RGB").save(buf, "PNG")
    elif mode == "RGBA":
        rgba = np.zeros((*image.shape, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = np.rint(image * 255).astype(np.uint8)  # white where opaque
        Image.fromarray(rgba, mode="RGBA").save(buf, "PNG")
    return buf.getvalue()


def png_b64(image: np.ndarray, mode: str = "L") -> str:
    return base64.b64encode(png_bytes(image, mode)).decode()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def decode_png_b64(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.float32) / 255.0


def die_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """The run dies right after the checkpoint of `epoch` is written, as a kill -9 between two
    epochs leaves it (nothing after the checkpoint runs)."""
    from training import train as training

    real = training._save_checkpoint

    def save(path: Path, state: dict[str, Any]) -> None:
        real(path, state)
        if len(state["history"]) == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save)
