"""Shared fixtures: a real uvicorn server on a free loopback port, serving the shipped models."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Settings that only decide where a model's config.pbtxt is silent (README: Model repository).
SCHEDULING = {"max_batch_size", "max_queue_delay_us", "max_queue_size", "request_timeout_s"}


def silent_repository(root: Path | None = None) -> Path:
    """A copy of the shipped models whose configs leave batching to the settings."""
    from benchmarks.bench import silent_models

    return silent_models(root)


class LiveServer:
    """The whole server (service/server.py: registry, data plane, HTTP and gRPC) running in a
    thread on its own event loop, on 127.0.0.1 and free ports. With scheduling settings, it
    serves a copy of the models whose configs leave those to settings."""

    def __init__(self, **overrides: Any) -> None:
        from service.logs import configure_logging
        from service.server import Server
        from service.settings import Settings

        if SCHEDULING & set(overrides) and "model_dir" not in overrides:
            overrides["model_dir"] = silent_repository()
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
        import asyncio

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

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.http.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.failure!r}")
            time.sleep(0.02)
        self.port = self.server.http_port
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.request_exit()
        self.thread.join(timeout=10)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with LiveServer() as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@contextlib.contextmanager
def live_server(**overrides: Any) -> Iterator[LiveServer]:
    with LiveServer(**overrides) as live:
        yield live


def _cuda_works() -> bool:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False
        ort.set_default_logger_severity(4)
        probe = ort.InferenceSession(
            str(MODELS / "locate" / "1" / "model.onnx"),
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
        ort.set_default_logger_severity(2)
        return "CUDAExecutionProvider" in probe.get_providers()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_works():
        skip = pytest.mark.skip(reason="needs a working CUDA execution provider")
        for item in gpu_items:
            item.add_marker(skip)
