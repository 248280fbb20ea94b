"""The data plane: everything a front end can ask of the server, as methods on plain types
(`service.dataplane.types`), with no HTTP or gRPC in sight. `/v1` and `/v2` over HTTP and the gRPC
servicer decode their wire format, call these and encode the answers, so every rule (names,
types, shapes, limits, value ranges, version routing, readiness, statistics) has one home.

Dictionaries returned for metadata, config, statistics and the repository index have the field
names of Triton's protocol messages, so the HTTP adapter writes them as JSON and the gRPC adapter
turns them into the protobuf messages of the same name without renaming anything.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from coordconv import __version__
from coordconv.triton import PLATFORM, Tensor
from service.dataplane.offload import Cost, Offload
from service.dataplane.tasks import CoordConvRules
from service.dataplane.types import InferRequest, InferResponse, InputTensor, OutputTensor
from service.errors import BadRequest, ModelError, NotFound, Unavailable
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.models import config as model_config
from service.models import repository
from service.models import statistics as stats
from service.models.control import ModelControl
from service.models.registry import ModelRegistry
from service.models.served import Served, tensor_info
from service.settings import Settings

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


class Siblings(Protocol):
    """The other worker processes of one server (`--workers N`; service/scaling/cluster.py):
    model control reaches every one of them, statistics are summed over them."""

    @property
    def index(self) -> int: ...  # this worker's

    async def control(self, entry: dict[str, Any]) -> None: ...

    async def statistics(
        self, name: str | None, version: str | None
    ) -> list[list[dict[str, Any]]]: ...


class DataPlane:
    def __init__(self, settings: Settings, control: ModelControl) -> None:
        self.settings = settings
        self.control = control
        self.registry = control.registry
        self.rules = control.rules  # the task rules: what a request's values must be
        self.lifecycle = control.lifecycle
        self.siblings: Siblings | None = None
        self.offload = Offload(settings.parse_processes)

    @classmethod
    def build(cls, settings: Settings, lifecycle: Lifecycle | None = None) -> DataPlane:
        """The plane over a registry of its own, whose models the CoordConv contract rules."""
        registry = ModelRegistry(settings, Metrics())
        control = ModelControl(settings, registry, CoordConvRules(), lifecycle or Lifecycle())
        return cls(settings, control)

    @property
    def metrics(self) -> Metrics:
        return self.registry.metrics

    def close(self) -> None:
        self.offload.close()

    # Health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """The one readiness rule (HTTP /readyz and /v2/health/ready, gRPC ServerReady and its
        health service): every start-up model loaded and warm, and not draining."""
        return not self.lifecycle.draining and self.registry.ready

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            return self.registry.get(name, version).ready
        except (NotFound, BadRequest, Unavailable):  # unknown, or loading, or shutting down
            return False

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "coordconv", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        m = self.registry.get(name, version)
        versions = [version] if version else [v.version for v in self.registry.all_versions(name)]
        return {
            "name": m.name,
            "versions": versions,
            "platform": m.config.platform or PLATFORM,  # "ensemble" for an ensemble
            "inputs": [tensor_info(t) for t in m.inputs],
            "outputs": [tensor_info(t) for t in m.outputs],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The effective config: config.pbtxt with the service's defaults where it is silent."""
        # max_batch_size 0 (no batching) is protobuf's default, so to_json would leave it out.
        return {
            "max_batch_size": 0,
            **model_config.to_json(self.registry.get(name, version).config),
        }

    def models(self) -> list[dict[str, Any]]:
        """Every served version, for /v1/models."""
        return [m.describe() for m in self.registry.all_versions()]

    def providers(self) -> dict[str, dict[str, str]]:
        """name -> version -> execution provider, of every served version (/readyz)."""
        out: dict[str, dict[str, str]] = {}
        for m in self.registry.all_versions():
            out.setdefault(m.name, {})[m.version] = m.provider
        return out

    async def model_statistics(
        self, name: str | None = None, version: str | None = None
    ) -> dict[str, Any]:
        """Triton's statistics of the server: every worker's requests summed."""
        own = self.registry.statistics(name, version)  # 404 for an unknown name or version
        if self.siblings is None:
            return {"model_stats": own}
        others = await self.siblings.statistics(name, version)
        return {"model_stats": stats.merge([own, *others])}

    # Repository

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return await self.control.index(ready_only)

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Load or reload `name`; parameters may carry `config`, a ModelConfig as JSON text,
        which replaces config.pbtxt for this model (as Triton accepts)."""
        self.control.check_control()
        repository.check_name(name)
        config = text = None
        for key, value in (parameters or {}).items():
            if key == "config":
                if not isinstance(value, str):
                    raise BadRequest("parameter 'config' must be a string holding JSON")
                try:
                    config = model_config.parse_json(value, f"model {name}: config parameter")
                except ModelError as exc:
                    raise BadRequest(str(exc)) from None
                text = value
            elif key.startswith("file:"):
                raise BadRequest("loading model files sent with the request is not supported")
            else:
                raise BadRequest(f"unknown load parameter {key!r}; supported: 'config'")
        if self.siblings is not None:  # every worker loads it, in the same order
            await self.siblings.control({"op": "load", "name": name, "config": text})
            return
        try:
            await self.control.load(name, config)
        except ModelError as exc:
            raise BadRequest(f"failed to load {name!r}: {exc}") from None

    async def unload(self, name: str) -> None:
        self.control.check_control()
        repository.check_name(name)
        if self.siblings is not None:
            await self.siblings.control({"op": "unload", "name": name})
            return
        await self.control.unload(name)

    # Inference

    def resolve(
        self, name: str, version: str | None, tasks: tuple[str, ...] | None = None
    ) -> Served:
        """The version that answers: a front end may resolve it before it reads the body (a 404
        before decoding), hold it, and hand it to `infer`; a request resolves its model once."""
        m = self.registry.get(name, version)
        if tasks and m.task not in tasks:
            raise BadRequest(
                f"model {name!r} does {m.task!r}; this route needs a model for "
                f"{' or '.join(repr(t) for t in tasks)}"
            )
        return m

    async def infer(self, req: InferRequest, m: Served | None = None) -> InferResponse:
        """Validate the request against the version that answers it (`m`, or the one `req`
        names), queue it in that version's batcher and return its outputs. The version is held
        until the answer is ready, so an unload or a reload lets it finish. A client that goes
        away cancels the task that awaits this (HTTP as gRPC): the batcher drops its rows."""
        if m is None:
            m = self.resolve(req.model, req.version, req.tasks)
        with m.request():
            xs = await self.offload.run(Cost.DECODE, _payload_bytes(req), self._inputs, req, m)
            names = self._outputs(req, m)
            outs = await m.infer_tensors(xs)
        tensors = [
            OutputTensor(t.name, t.datatype, list(y.shape), y)
            for t, y in zip(m.outputs, outs, strict=True)
            if t.name in names
        ]
        return InferResponse(m.name, m.version, m.sha256, m.task, tensors, req.id, m.config)

    def _inputs(self, req: InferRequest, m: Served) -> list[np.ndarray]:
        """The request's input tensors as float32 arrays, in the model's input order, each
        checked (names, types, shapes, limits, values)."""
        if not req.inputs:
            raise BadRequest("'inputs' must be a non-empty list")
        if len(req.inputs) != len(m.inputs):
            raise BadRequest(
                f"model {m.name!r} takes {len(m.inputs)} input{'s' if len(m.inputs) > 1 else ''}"
                f", got {len(req.inputs)}"
            )
        if len(m.inputs) == 1:  # every model; an ensemble may have several
            t, spec = req.inputs[0], m.inputs[0]
            if t.name != spec.name:
                raise BadRequest(f"unknown input {t.name!r}; model {m.name!r} takes {spec.name!r}")
            return [self._input(t, spec, m, req.max_items)]
        given = {t.name: t for t in req.inputs}
        for t in req.inputs:
            if t.name not in {spec.name for spec in m.inputs}:
                takes = " and ".join(repr(spec.name) for spec in m.inputs)
                raise BadRequest(f"unknown input {t.name!r}; model {m.name!r} takes {takes}")
        if len(given) != len(req.inputs):
            raise BadRequest(f"model {m.name!r}: an input is given more than once")
        xs = [self._input(given[spec.name], spec, m, req.max_items) for spec in m.inputs]
        if len({len(x) for x in xs}) > 1:
            raise BadRequest(
                f"model {m.name!r}: the inputs' batch sizes differ ({[len(x) for x in xs]})"
            )
        return xs

    def _input(self, t: InputTensor, spec: Tensor, m: Served, max_items: int | None) -> np.ndarray:
        if max_items is not None:
            limit, limit_name = max_items, "MAX_ITEMS_PER_REQUEST"
        elif m.scheduling.batching:
            limit, limit_name = m.scheduling.max_batch_size, "max_batch_size"
        else:  # a model that does not batch: one call per request, of bounded size
            limit, limit_name = m.scheduling.request_items, "LIMIT_BATCH_SIZE"
        x = decode_tensor(t, spec, limit, limit_name)
        if len(x) > m.scheduling.max_queue_size:
            raise BadRequest(
                f"{len(x)} items can never fit model {m.name!r}'s queue (max_queue_size "
                f"{m.scheduling.max_queue_size}); send at most that many per request"
            )
        self.rules.check_values(m.rule_input(spec.name), x, t.label or t.name)
        return x.astype(np.float32, copy=False)

    def _outputs(self, req: InferRequest, m: Served) -> set[str]:
        have = m.output_names
        if req.outputs is None:
            return set(have)
        for name in req.outputs:
            if name not in have:
                raise BadRequest(f"unknown output {name!r}; model {m.name!r} has {have}")
        return set(req.outputs)


def _payload_bytes(req: InferRequest) -> int:
    """What decoding and checking the request's tensors touches, in bytes (offload's size)."""
    total = 0
    for t in req.inputs:
        if t.array is not None:
            total += t.array.nbytes
        elif t.raw is not None:
            total += len(t.raw)
        elif isinstance(t.data, np.ndarray):
            total += t.data.nbytes
        elif isinstance(t.data, list):
            total += 8 * len(t.data)  # at least; nested lists are arrays by now (v2.decode)
    return total


def decode_tensor(t: InputTensor, spec: Tensor, max_items: int, limit_name: str) -> np.ndarray:
    """An input tensor as float32 of shape [N, *spec.dims], its shape and size checked."""
    label = t.label or t.name
    if t.datatype != spec.datatype:
        raise BadRequest(f"input {label!r} must be {spec.datatype}, got {t.datatype!r}")
    shape = t.shape
    if (
        not isinstance(shape, list | tuple)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or len(shape) != len(spec.dims) + 1
        or tuple(shape[1:]) != spec.dims
    ):
        raise BadRequest(f"input {label!r} has shape {shape}; expected {['N', *spec.dims]}")
    batch = shape[0]
    if batch < 1:
        raise BadRequest(f"input {label!r}: batch size must be >= 1, got {batch}")
    if batch > max_items:
        raise BadRequest(f"input {label!r}: batch size {batch} exceeds {limit_name} {max_items}")
    count = math.prod(shape)  # plain ints: np.prod costs microseconds per request
    if t.array is not None:
        arr = t.array
        if arr.shape != tuple(shape):
            raise BadRequest(f"input {label!r} has shape {list(arr.shape)}; expected {shape}")
        return arr  # cast to float32 once its values are checked
    if t.raw is not None:
        if len(t.raw) != count * 4:
            raise BadRequest(
                f"input {label!r}: {len(t.raw)} bytes of data for shape {shape} "
                f"({count} FP32 values, {count * 4} bytes)"
            )
        return np.frombuffer(t.raw, dtype="<f4").reshape(shape).astype(np.float32)
    if t.data is None:
        raise BadRequest(f"input {label!r} has no data")
    try:
        raw = np.asarray(t.data)
        if raw.dtype.kind not in "iuf":  # strings, booleans, ragged lists
            raise TypeError
        with np.errstate(over="ignore"):  # huge values become inf; the checks refuse them
            arr = raw.astype(np.float32)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(
            f"input {label!r}: data must be numbers (flat or nested), not strings or booleans"
        ) from None
    if arr.size != count:
        raise BadRequest(f"input {label!r}: {arr.size} values for shape {shape} ({count} values)")
    return arr.reshape(shape)
