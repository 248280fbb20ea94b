"""One model version, served: its onnxruntime session, its batcher and its threads, with an
explicit lifecycle

    WARMING -> READY -> DRAINING -> CLOSED

`open_version` does the blocking part in a worker thread: load the ONNX file, verify it against
its config and the task's contract (a failure raises ModelError and nothing is kept), warm it
up; `start` puts the batcher on the event loop and the version takes traffic; `drain` waits
until no request holds the version any more (`hold`), then closes it, so a version that is
unloaded or replaced finishes everything it accepted.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from coordconv.contract import (
    CANVAS,
    META_ARCH,
    META_METRICS,
    META_SPLIT,
    META_TASK,
    META_TRAINED_AT,
    SIGNATURES,
    TASKS,
    Tensor,
)
from service.models import config as model_config
from service.models.batcher import Batcher, Disconnected, Outputs
from service.errors import ModelError
from service.metrics import Metrics
from service.models.config import GraphTensor, ModelConfig, Scheduling
from service.settings import Settings
from service.models.statistics import ModelStats

log = logging.getLogger("coordconv.model")

WARMUP_ITEMS = 64
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class State(enum.Enum):
    WARMING = "WARMING"  # opened and verified, running its warm-up (not routed to yet)
    READY = "READY"  # routed to
    DRAINING = "DRAINING"  # unrouted; finishing what it accepted
    CLOSED = "CLOSED"


def session_options(settings: Settings) -> ort.SessionOptions:
    """Chosen deliberately: intra-op threads from settings (0 lets onnxruntime use one per
    physical core); one inter-op thread (the graphs are sequential chains); no spinning, because
    the batcher leaves gaps between calls in which spinning threads would steal the CPU from the
    event loop that parses requests; full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _graph(values: list[ort.NodeArg]) -> list[GraphTensor]:
    return [GraphTensor(v.name, v.type, tuple(v.shape)) for v in values]


@dataclass(eq=False)
class ModelVersion:
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
    provider: str
    metadata: dict[str, str]
    stats: ModelStats
    fingerprint: tuple[object, ...] = ()
    state: State = State.WARMING
    executor: ThreadPoolExecutor | None = None
    batcher: Batcher | None = None
    holders: int = 0  # requests that hold this version (acquire/release)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def input(self) -> Tensor:
        return self.inputs[0]

    @property
    def ok_threshold(self) -> float:
        """The confidence at and above which a located point is `ok` (config parameter
        `coordconv.ok_threshold`, default 0.5)."""
        p = self.config.parameters.get("coordconv.ok_threshold")
        try:
            return float(p.string_value) if p is not None else 0.5
        except ValueError:
            return 0.5

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def metrics(self) -> dict[str, Any]:
        try:
            value = json.loads(self.metadata.get(META_METRICS, "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def run(self, batch: np.ndarray) -> Outputs:
        """One onnxruntime call (thread-safe): every output, in signature order."""
        session = self.session
        if session is None:
            raise RuntimeError(f"model {self.name} version {self.version} is closed")
        return tuple(session.run(self.output_names, {self.input.name: batch}))

    def start(self, metrics: Metrics) -> None:
        """On the event loop: threads and batcher; the version takes traffic from now on."""
        self.executor = ThreadPoolExecutor(
            max_workers=self.scheduling.instances,
            thread_name_prefix=f"ort-{self.name}-{self.version}",
        )
        self.batcher = Batcher(
            self.name, self.version, self.run, self.executor, self.scheduling, metrics, self.stats
        )
        self.batcher.start()
        self.state = State.READY

    async def infer(self, x: np.ndarray, disconnected: Disconnected | None = None) -> Outputs:
        assert self.batcher is not None
        return await self.batcher.infer(x, disconnected)

    @contextmanager
    def hold(self) -> Iterator[ModelVersion]:
        """A request's claim on this version: draining waits for every holder."""
        self.holders += 1
        try:
            yield self
        finally:
            self.holders -= 1
            if self.holders == 0:
                self._released.set()

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop taking new requests (the caller has already routed traffic away), let every
        request that holds this version finish, then close it."""
        if self.state in (State.CLOSED, State.DRAINING):
            return
        self.state = State.DRAINING
        try:
            while self.holders > 0:
                self._released.clear()
                await asyncio.wait_for(self._released.wait(), grace_s)
        except TimeoutError:
            log.warning(
                "%s:%s: %d requests still running after the grace time",
                self.name,
                self.version,
                self.holders,
            )
        await self.close()

    async def close(self, message: str = "the server is shutting down") -> None:
        """Stop the batcher, end its threads and let go of the session, so that unloading gives
        back the session's memory and its onnxruntime threads (they live as long as the session
        object, which nothing may keep: the batcher holds `run`, a bound method of this)."""
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

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry."""
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "task": self.task,
            "arch": self.metadata.get(META_ARCH, "unknown"),
            "split": self.metadata.get(META_SPLIT),
            "sha256": self.sha256,
            "provider": self.provider,
            "max_batch_size": self.scheduling.max_batch_size,
            "inputs": [tensor_info(t) for t in self.inputs],
            "outputs": [tensor_info(t) for t in self.outputs],
            "metrics": self.metrics,
            "trained_at": self.metadata.get(META_TRAINED_AT),
        }


def tensor_info(t: Tensor) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]}


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
) -> ModelVersion:
    """Blocking: load, verify and warm one version. `config` is the parsed config.pbtxt (None:
    derive it from the graph); `data` the ONNX file's bytes as the repository read them (None:
    read `path` here); `label` how messages name the file (relative to the repository). Raises
    ModelError with one line naming the file and the problem, never a server path."""
    where = f"model {name} version {version} ({label or path.name})"
    if data is None:
        data = path.read_bytes()
    if config is not None:
        kind = model_config.instance_kind(config)
        if kind == "gpu" and "CUDAExecutionProvider" not in providers:
            raise ModelError(
                f"{where}: instance_group asks for KIND_GPU but no GPU is in use "
                f"(execution providers: {', '.join(providers)})"
            )
        if kind == "cpu":
            providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(data, session_options(settings), providers=providers)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{where}: cannot load the ONNX file: {first[:300]}") from None
    # VERIFYING: the task from the graph's metadata, the graph against the config and contract.
    meta = dict(session.get_modelmeta().custom_metadata_map)
    task = meta.get(META_TASK)
    if task not in TASKS:
        raise ModelError(
            f"{where}: metadata {META_TASK} is {task!r}; expected one of {', '.join(TASKS)}"
        )
    inputs, outputs = _graph(session.get_inputs()), _graph(session.get_outputs())
    if config is None:
        config = model_config.from_graph(name, inputs, outputs)
    batching = config.max_batch_size > 0 or not settings.strict_model_config
    model_config.verify(config, name, task, inputs, outputs, where, batching)
    declared = config.parameters.get(META_TASK)
    if declared is not None and declared.string_value and declared.string_value != task:
        raise ModelError(
            f"{where}: the graph does {task!r} but config.pbtxt declares "
            f"{META_TASK} {declared.string_value!r}"
        )
    effective = model_config.complete(config, name, settings)
    model_config.check_limits(effective, f"model {name}", settings, versions=1)
    scheduling = model_config.scheduling(effective, f"model {name}: config.pbtxt", settings)
    provider = session.get_providers()[0]
    if settings.require_gpu and provider != "CUDAExecutionProvider":
        raise ModelError(f"REQUIRE_GPU is set but model {name} runs on {provider}")
    sig = SIGNATURES[task]
    order = [t.name for t in sig.outputs + sig.optional_outputs]
    graph_outputs = sorted(
        model_config.tensors_of(effective, "output"), key=lambda t: order.index(t.name)
    )
    m = ModelVersion(
        name=name,
        version=str(version),
        task=task,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        config=effective,
        scheduling=scheduling,
        session=session,
        inputs=model_config.tensors_of(effective, "input"),
        outputs=graph_outputs,
        provider=provider,
        metadata=meta,
        stats=ModelStats(name, str(version)),
        fingerprint=fingerprint,
        state=State.WARMING,
    )
    warm_up(m, where)
    return m


def warm_up(m: ModelVersion, where: str) -> None:
    """Run at batch 1 and at the largest batch up to WARMUP_ITEMS, so first requests do not pay
    for allocation (a bounded warm-up: a large max_batch_size does not allocate its whole batch
    at load), and check the outputs' shapes and values."""
    for n in sorted({1, min(max(m.scheduling.max_batch_size, 1), WARMUP_ITEMS)}):
        x = np.zeros((n, *m.input.dims), dtype=np.float32)
        if m.task != "locate":
            x += CANVAS / 2
        try:
            outs = m.run(x)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{where}: warm-up at batch {n} failed: {first[:300]}") from None
        for t, out in zip(m.outputs, outs, strict=True):
            if out.shape != (n, *t.dims) or not np.isfinite(out).all():
                raise ModelError(
                    f"{where}: warm-up gave {t.name} of shape {list(out.shape)} (want "
                    f"{[n, *t.dims]}) or non-finite values"
                )


def usable_providers(
    settings: Settings, probe_model: bytes | None
) -> tuple[list[str], str | None]:
    """The execution providers to use, and a line saying which wanted ones are unavailable.
    GPU providers that cannot load here are dropped with one line instead of onnxruntime's
    library errors for every session."""
    wanted = [PROVIDERS[p] for p in settings.provider_list]
    gpu = [p for p in wanted if p != "CPUExecutionProvider"]
    if not gpu:
        return wanted, None
    active = ["CPUExecutionProvider"]
    if probe_model is not None and any(p in ort.get_available_providers() for p in gpu):
        ort.set_default_logger_severity(4)  # silence the probe's library errors
        try:
            active = ort.InferenceSession(probe_model, providers=wanted).get_providers()
        except Exception as exc:  # a corrupt probe model is reported when it is loaded
            log.debug("provider probe failed: %s", exc)
        finally:
            ort.set_default_logger_severity(2)
    usable = [p for p in wanted if p in active] or ["CPUExecutionProvider"]
    missing = [p for p in gpu if p not in active]
    problem = None
    if missing:
        problem = (
            f"{', '.join(missing)} unavailable (no GPU, or its CUDA/cuDNN libraries are missing; "
            f"onnxruntime {ort.__version__})"
        )
    return usable, problem
