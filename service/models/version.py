"""One model version, served: its onnxruntime session, its batcher and its threads, with an
explicit lifecycle

    WARMING -> READY -> DRAINING -> CLOSED

`open_version` does the blocking part in a worker thread: load the ONNX file, verify it against
its config and the task's contract (a failure raises ModelError and nothing is kept), warm it
up (the config's `model_warmup` samples, else a default warm-up: a failed warm-up fails the
load); `start` puts the batcher on the event loop and the version takes traffic; `drain` waits
until no request holds the version any more (`hold`), then closes it, so a version that is
unloaded or replaced finishes everything it accepted.

With `response_cache { enable: true }` and a cache (CACHE_SIZE_BYTES), `infer` answers items
seen before from the cache (service/models/cache.py) and sends only the others to the batcher.
A graph that reads an input only through `Round` (and `Shape`), as render version 2 does, gives
the same answer for every point that rounds alike: its items are keyed by the rounded input, so
points near one centre share one entry and the answers stay exactly the model's.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnxruntime as ort

from coordconv.contract import (
    CANVAS,
    IMAGE,
    META_ARCH,
    META_METRICS,
    META_SPLIT,
    META_TASK,
    META_TRAINED_AT,
    SIGNATURES,
    TASKS,
    Tensor,
)
from service.errors import LoadCancelled, ModelError
from service.metrics import Metrics
from service.models import config as model_config
from service.models import repository
from service.models.batcher import Batcher, Disconnected, Outputs
from service.models.cache import ResponseCache
from service.models.config import GraphTensor, ModelConfig, Scheduling
from service.models.statistics import ModelStats
from service.settings import Settings

log = logging.getLogger("coordconv.model")

WARMUP_ITEMS = 64
_loads = itertools.count(1)
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


@dataclass
class WarmupGuard:
    """Checked before every warm-up run (and before a session is built): a load stops there
    when the server is shutting down (`stop`, set from the event loop), and a warm-up that has
    run longer than LIMIT_WARMUP_S fails its load. One run is the longest either waits."""

    stop: threading.Event
    limit_s: float
    started: float = field(default_factory=time.monotonic)

    def check(self, where: str) -> None:
        if self.stop.is_set():
            raise LoadCancelled(f"{where}: load cancelled: the server is shutting down")
        if time.monotonic() - self.started > self.limit_s:
            raise ModelError(
                f"{where}: warm-up ran longer than LIMIT_WARMUP_S={self.limit_s:g} s; ask "
                "model_warmup for fewer or smaller runs, or raise the limit"
            )


def _graph(values: list[ort.NodeArg]) -> list[GraphTensor]:
    return [GraphTensor(v.name, v.type, tuple(v.shape)) for v in values]


class Held:
    """What a served version (a model's, an ensemble's) does with the requests that hold it:
    `hold` counts them, `drain` waits for them to finish, then closes the version."""

    name: str
    version: str
    state: State
    holders: int
    _released: asyncio.Event

    @contextmanager
    def hold(self) -> Iterator[Self]:
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
        raise NotImplementedError


@dataclass(eq=False)
class ModelVersion(Held):
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
    # The response cache, where the config enables it and the server has one (`start`).
    cache: ResponseCache | None = None
    cache_owner: int = 0
    rounded_inputs: frozenset[str] = frozenset()  # inputs the graph reads only through Round
    # This load of this version, unique in the process: what an ensemble's cached answers are
    # keyed by (a reload is a new object, so a new serial).
    serial: int = field(default_factory=lambda: next(_loads))

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

    def start(self, metrics: Metrics, cache: ResponseCache | None = None) -> None:
        """On the event loop: threads and batcher; the version takes traffic from now on. With
        `cache` (the server's response cache), and response_cache enabled in the config, its
        answers are cached."""
        if cache is not None and self.config.response_cache.enable:
            self.cache, self.cache_owner = cache, cache.register()
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
        batcher = self.batcher
        assert batcher is not None
        if self.cache is None:
            return await batcher.infer(x, disconnected)

        async def compute(xs: tuple[np.ndarray, ...]) -> Outputs:
            return await batcher.infer(xs[0], disconnected)

        key = np.rint(x) if self.input.name in self.rounded_inputs else x
        return await self.cache.infer(self.cache_owner, (x,), compute, self.stats, (key,))

    async def infer_tensors(
        self, xs: list[np.ndarray], disconnected: Disconnected | None = None
    ) -> Outputs:
        """The data plane's call: the inputs in `inputs` order (a model has one)."""
        return await self.infer(xs[0], disconnected)

    def input_contract(self, name: str) -> str:
        """The contract tensor whose value rules (range checks) apply to input `name`."""
        return name

    async def close(self, message: str = "the server is shutting down") -> None:
        """Stop the batcher, end its threads and let go of the session, so that unloading gives
        back the session's memory and its onnxruntime threads (they live as long as the session
        object, which nothing may keep: the batcher holds `run`, a bound method of this)."""
        if self.cache is not None:
            self.cache.purge(self.cache_owner)
            self.cache = None
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
    warmup_files: dict[str, bytes] | None = None,
    stop: threading.Event | None = None,
) -> ModelVersion:
    """Blocking: load, verify and warm one version. `config` is the parsed config.pbtxt (None:
    derive it from the graph); `data` the ONNX file's bytes as the repository read them (None:
    read `path` here); `label` how messages name the file (relative to the repository);
    `warmup_files` the model_warmup input_data_file contents by name (None: read them from the
    model folder's warmup/ here); `stop` cancels it between two warm-up runs (LoadCancelled).
    Raises ModelError with one line naming the file and the problem, never a server path."""
    where = f"model {name} version {version} ({label or path.name})"
    guard = WarmupGuard(stop or threading.Event(), settings.limit_warmup_s)
    guard.check(where)
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
    model_config.check_warmup(effective, f"model {name}", settings)
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
    if effective.response_cache.enable:
        m.rounded_inputs = rounded_inputs(data, [t.name for t in m.inputs])
    guard.started = time.monotonic()  # the limit is the warm-up's, not the session's build
    if effective.model_warmup:
        if warmup_files is None:
            warmup_files = repository.read_warmup(path.parent.parent.parent, name, effective)
        warm_up_from_config(m, where, warmup_files, guard)
    else:
        warm_up(m, where, guard)
    return m


def warm_up(m: ModelVersion, where: str, guard: WarmupGuard) -> None:
    """Run at batch 1 and at the largest batch up to WARMUP_ITEMS, so first requests do not pay
    for allocation (a bounded warm-up: a large max_batch_size does not allocate its whole batch
    at load), and check the outputs' shapes and values."""
    for n in sorted({1, min(max(m.scheduling.max_batch_size, 1), WARMUP_ITEMS)}):
        x = np.zeros((n, *m.input.dims), dtype=np.float32)
        if m.task != "locate":
            x += CANVAS / 2
        guard.check(where)
        try:
            outs = m.run(x)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{where}: warm-up at batch {n} failed: {first[:300]}") from None
        check_outputs(m, outs, n, f"{where}: warm-up")


def check_outputs(m: ModelVersion, outs: Outputs, n: int, label: str) -> None:
    """A warm-up's outputs: of the declared shapes, and finite."""
    for t, out in zip(m.outputs, outs, strict=True):
        if out.shape != (n, *t.dims):
            raise ModelError(
                f"{label} gave {t.name} of shape {list(out.shape)}; want {[n, *t.dims]}"
            )
        if not np.isfinite(out).all():
            raise ModelError(f"{label} gave {t.name} with values that are not finite")


def warm_up_from_config(
    m: ModelVersion, where: str, files: dict[str, bytes], guard: WarmupGuard
) -> None:
    """The config's model_warmup samples (checked by config.check_warmup), each run `count`
    times (at least once) on the session, before the version is ready, as Triton does: zeros,
    random values in the input's valid range (pixels [0, 63] for coordinates, [0, 1] for
    images), or an input_data_file (little-endian FP32, row-major, one sample: the batch repeats
    it). A failure, or outputs of the wrong shape or not finite, fails the load."""
    rng = np.random.default_rng(0)
    batching = m.scheduling.batching
    for i, sample in enumerate(m.config.model_warmup):
        label = f"model_warmup[{i}]" + (f" {sample.name[:40]!r}" if sample.name else "")
        feeds: dict[str, np.ndarray] = {}
        for t in m.inputs:
            spec = sample.inputs[t.name]
            dims = tuple(spec.dims)
            which = spec.WhichOneof("input_data_type")
            if which == "zero_data":
                one = np.zeros(dims, np.float32)
            elif which == "random_data":
                high = 1.0 if t.name == IMAGE.name else float(CANVAS - 1)
                one = rng.uniform(0.0, high, dims).astype(np.float32)
            else:
                file = spec.input_data_file
                raw = files.get(file)
                want = 4 * int(np.prod(dims, dtype=np.int64))
                if raw is None or len(raw) != want:
                    got = "no file" if raw is None else f"{len(raw)} bytes"
                    raise ModelError(
                        f"{where}: {label}: input {t.name!r}: {m.name}/"
                        f"{model_config.WARMUP_DIR}/{file} holds {got}; FP32 {list(dims)} is "
                        f"{want} bytes (little-endian, row-major)"
                    )
                one = np.frombuffer(raw, "<f4").reshape(dims).astype(np.float32)
                if not np.isfinite(one).all():
                    raise ModelError(
                        f"{where}: {label}: input {t.name!r}: {m.name}/"
                        f"{model_config.WARMUP_DIR}/{file} holds values that are not finite"
                    )
            # A batching model: batch_size copies of the sample; otherwise its rows as given.
            feeds[t.name] = np.repeat(one[None], sample.batch_size, 0) if batching else one
        n = len(feeds[m.input.name])
        for _ in range(max(sample.count, 1)):
            guard.check(where)
            try:
                outs = m.run(feeds[m.input.name])
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"{where}: warm-up {label} failed: {first[:300]}") from None
            check_outputs(m, outs, n, f"{where}: warm-up {label}")


@functools.cache
def _onnx_subset() -> Any:
    """Just enough of onnx.proto to read which nodes consume which tensors (ModelProto.graph 7,
    GraphProto.node 1 and output 12, NodeProto.input 1, op_type 4, domain 7,
    ValueInfoProto.name 1), parsed by protobuf itself: the serve extra has no onnx package.
    Every other field is skipped as unknown."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="coordconv_onnx_subset.proto", package="coordconv_onnx_subset", syntax="proto2"
    )
    fields: dict[str, list[tuple[str, int, int, int, str]]] = {
        "Node": [
            ("input", 1, f.TYPE_STRING, f.LABEL_REPEATED, ""),
            ("op_type", 4, f.TYPE_STRING, f.LABEL_OPTIONAL, ""),
            ("domain", 7, f.TYPE_STRING, f.LABEL_OPTIONAL, ""),
        ],
        "Value": [("name", 1, f.TYPE_STRING, f.LABEL_OPTIONAL, "")],
        "Graph": [
            ("node", 1, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".coordconv_onnx_subset.Node"),
            ("output", 12, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".coordconv_onnx_subset.Value"),
        ],
        "Model": [("graph", 7, f.TYPE_MESSAGE, f.LABEL_OPTIONAL, ".coordconv_onnx_subset.Graph")],
    }
    for message, entries in fields.items():
        m = proto.message_type.add(name=message)
        for name, number, kind, label, type_name in entries:
            entry = m.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("coordconv_onnx_subset.Model")
    )


def rounded_inputs(data: bytes, names: list[str]) -> frozenset[str]:
    """The inputs among `names` that the graph reads only through standard-domain `Round`
    (and `Shape`, which sees the batch size alone): its answer then depends on the rounded
    values only, so a cache may key on them. Conservative: a graph with control flow (its
    subgraphs may read any tensor), or one that cannot be read, rounds nothing."""
    from google.protobuf.message import DecodeError

    try:
        graph = _onnx_subset().FromString(data).graph
    except DecodeError:
        return frozenset()
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        return frozenset()
    outputs = {o.name for o in graph.output}
    out = set()
    for name in names:
        consumers = [n for n in graph.node if name in n.input]
        standard = all(n.domain in ("", "ai.onnx") for n in consumers)
        kinds = {n.op_type for n in consumers}
        if name not in outputs and standard and "Round" in kinds and kinds <= {"Round", "Shape"}:
            out.add(name)
    return frozenset(out)


def usable_providers(settings: Settings, probe_model: bytes | None) -> tuple[list[str], str | None]:
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
