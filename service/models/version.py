"""One model version at run time: its onnxruntime session, its batcher and its threads
(the lifecycle and the holding of requests are served.py's).

`open_version` does the blocking part in a worker thread: open and verify (loading.py), then warm
up (warmup.py), while the version is WARMING; `start` puts the batcher on the event loop and the
version takes traffic; `close` lets go of the session and its threads.

With `response_cache { enable: true }` and a cache (CACHE_SIZE_BYTES), `infer` answers items
seen before from the cache (service/models/cache.py) and sends only the others to the batcher.
A graph that reads an input only through `Round` (and `Shape`), as render version 2 does, gives
the same answer for every point that rounds alike: its items are keyed by the rounded input, so
points near one centre share one entry and the answers stay exactly the model's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from coordconv.triton import Tensor
from service.errors import Unavailable
from service.metrics import Metrics
from service.models import loading, warmup
from service.models.batcher import Batcher
from service.models.cache import ResponseCache
from service.models.config import ModelConfig, Scheduling
from service.models.rules import GENERIC, TaskRules

# Re-exported: benchmarks/bench.py and benchmarks/gpu.py open versions as the service does.
from service.models.runtime import session_options as session_options
from service.models.runtime import usable_providers as usable_providers
from service.models.served import Outputs, Served, State, next_serial
from service.models.statistics import ModelStats
from service.settings import Settings

log = logging.getLogger("coordconv.model")


@dataclass(eq=False)
class ModelVersion(Served):
    name: str
    version: str
    task: str
    path: Path
    sha256: str
    config: ModelConfig  # the effective config
    scheduling: Scheduling
    session: ort.InferenceSession | None
    inputs: list[Tensor]
    outputs: list[Tensor]
    runs_on: str  # its execution provider
    about: dict[str, Any]  # what /v1/models says of its graph's metadata
    stats: ModelStats
    fingerprint: tuple[object, ...] = ()
    state: State = State.WARMING
    executor: ThreadPoolExecutor | None = None
    batcher: Batcher | None = None
    holders: int = 0  # requests that hold this version (acquire/release)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    # The response cache, where the config enables it and the server has one (`start`).
    cache: ResponseCache | None = None
    cache_owner: int = 0
    rounded_inputs: frozenset[str] = frozenset()  # inputs the graph reads only through Round
    # This load of this version, unique in the process: what an ensemble's cached answers are
    # keyed by (a reload is a new object, so a new serial).
    serial: int = field(default_factory=next_serial)
    steps: Sequence[Any] = field(default=(), init=False)  # a model runs no other models

    @property
    def provider(self) -> str:
        return self.runs_on

    def details(self) -> dict[str, Any]:
        return self.about

    def run(self, batch: np.ndarray) -> Outputs:
        """One onnxruntime call (thread-safe): every output, in signature order."""
        session = self.session
        if session is None:
            raise RuntimeError(f"model {self.name} version {self.version} is closed")
        return tuple(session.run(self.output_names, {self.input.name: batch}))

    def start(self, metrics: Metrics, cache: ResponseCache | None = None) -> None:
        """On the event loop: threads and batcher; the version takes traffic from now on."""
        self._use_cache(cache)
        self.executor = ThreadPoolExecutor(
            max_workers=self.scheduling.instances,
            thread_name_prefix=f"ort-{self.name}-{self.version}",
        )
        self.batcher = Batcher(
            self.name, self.version, self.run, self.executor, self.scheduling, metrics, self.stats
        )
        self.batcher.start()
        self.state = State.READY

    async def infer(self, x: np.ndarray) -> Outputs:
        batcher = self.batcher
        if batcher is None:  # closed under its request: the server stopped
            raise Unavailable(f"model {self.name!r} is unloading; retry", retry_after=1)
        if self.cache is None:
            return await batcher.infer(x)

        async def compute(xs: tuple[np.ndarray, ...]) -> Outputs:
            return await batcher.infer(xs[0])

        key = np.rint(x) if self.input.name in self.rounded_inputs else x
        return await self.cache.infer(self.cache_owner, (x,), compute, self.stats, (key,))

    async def infer_tensors(self, xs: list[np.ndarray]) -> Outputs:
        """The data plane's call: the inputs in `inputs` order (a model has one)."""
        return await self.infer(xs[0])

    def shed(self, message: str) -> None:
        if self.batcher is not None:
            self.batcher.shed(message)

    async def close(self, message: str = "the server is shutting down") -> None:
        """Stop the batcher, end its threads and let go of the session, so that unloading gives
        back the session's memory and its onnxruntime threads (they live as long as the session
        object, which nothing may keep: the batcher holds `run`, a bound method of this)."""
        self._drop_cache()
        if self.batcher is not None:
            await self.batcher.stop(message)
        if self.executor is not None:
            executor = self.executor
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        self.batcher = None
        self.executor = None
        self.session = None
        self.state = State.CLOSED
        log.info("unloaded %s version %s", self.name, self.version)


def open_version(
    name: str,
    version: int,
    path: Path,
    config: ModelConfig | None,
    settings: Settings,
    providers: list[str],
    fingerprint: tuple[object, ...] = (),
    data: bytes | None = None,
    label: str | None = None,
    warmup_files: dict[str, bytes] | None = None,
    stop: threading.Event | None = None,
    rules: TaskRules = GENERIC,
) -> ModelVersion:
    """Blocking: load, verify and warm one version. `config` is the parsed config.pbtxt (None:
    derive it from the graph); `data` the ONNX file's bytes as the repository read them (None:
    read `path` here); `label` how messages name the file (relative to the repository);
    `warmup_files` the model_warmup input_data_file contents by name (None: read them from the
    model folder's warmup/ here); `stop` cancels it between two warm-up runs (LoadCancelled);
    `rules` what the model's task requires. Raises ModelError with one line."""
    where = f"model {name} version {version} ({label or path.name})"
    guard = warmup.WarmupGuard(stop or threading.Event(), settings.limit_warmup_s)
    guard.check(where)
    if data is None:
        data = path.read_bytes()
    opened = loading.open_model(
        name, data, config, settings, providers=providers, where=where, rules=rules
    )
    m = ModelVersion(
        name=name,
        version=str(version),
        path=path,
        stats=ModelStats(name, str(version)),
        fingerprint=fingerprint,
        **opened.parts(),
    )
    if warmup_files is None and opened.config.model_warmup:
        warmup_files = warmup.read_files(path.parent.parent.parent, name, opened.config)
    guard.started = time.monotonic()  # the limit is the warm-up's, not the session's build
    warmup.run(m, where, warmup_files or {}, guard, rules.input_range)
    return m
