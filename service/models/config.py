"""`config.pbtxt`, the per-model source of truth: parsed as Triton's `ModelConfig` protobuf (the
generated module that `tritonclient` ships; no hand-written parser), verified against the ONNX
graph, completed with the service's settings where it is silent, and turned into the scheduling
parameters the batcher uses.

Strict (Triton's default): a missing, unparseable or foreign config, or one that disagrees with
its graph, refuses the model with one line saying what is wrong. Not strict: a missing config is
filled from the graph, as `tritonserver --strict-model-config=false` does.

What a task requires of a model (its signature) is not here: the task rules given from above
(service/models/rules.py) check it. `model_warmup` is service/models/warmup.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from coordconv.triton import BACKEND, PLATFORM, Tensor
from service.errors import ModelError
from service.settings import Settings

ModelConfig: TypeAlias = mc.ModelConfig  # Triton's generated protobuf message
ConfigTensor: TypeAlias = mc.ModelInput | mc.ModelOutput
CONFIG_FILE = "config.pbtxt"
TYPE_FP32 = mc.DataType.Value("TYPE_FP32")
ENSEMBLE = "ensemble"  # Triton's platform name for a pipeline of other models


def is_ensemble(config: ModelConfig | None) -> bool:
    return config is not None and config.platform == ENSEMBLE


@dataclass(frozen=True)
class GraphTensor:
    """An input or output of an ONNX graph: name, onnxruntime type, dims with the batch axis
    (a str or None for a symbolic dim)."""

    name: str
    type: str
    dims: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Scheduling:
    """What the batcher and the model handle take from the effective config."""

    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int  # items waiting before 503
    timeout_s: float  # a request still queued after this: REJECT (503) or DELAY (keep waiting)
    delay_on_timeout: bool
    instances: int  # onnxruntime calls of this model that may run at once
    request_items: int  # the most rows one request may carry

    @property
    def batching(self) -> bool:
        """max_batch_size 0 means the model does not batch (as in Triton): each request runs
        alone, its inputs' first axis part of the config's dims."""
        return self.max_batch_size > 0


def parse_text(text: str, where: str) -> ModelConfig:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelError(f"{where}: cannot parse as Triton's ModelConfig: {exc}") from None
    return config


def parse_json(text: str, where: str) -> ModelConfig:
    """A config given as JSON (the `config` parameter of a repository load request)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise ModelError(f"{where}: not a ModelConfig in JSON form: {exc}") from None
    return config


def from_text(text: str | None, name: str, strict: bool) -> ModelConfig | None:
    """A model's config.pbtxt (its text as the repository scan read it), parsed; None when it
    is missing and `strict` is off."""
    if text is None:
        if strict:
            raise ModelError(
                f"model {name}: {CONFIG_FILE} is missing (strict model config; write one, or "
                "start with --no-strict-model-config to derive it from the graph)"
            )
        return None
    return parse_text(text, f"model {name}: {CONFIG_FILE}")


def from_graph(name: str, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> ModelConfig:
    """A config derived from the graph, for a model without config.pbtxt (not strict)."""
    config = ModelConfig(name=name, platform=PLATFORM, backend=BACKEND)
    for src, dst in ((inputs, config.input), (outputs, config.output)):
        for t in src:
            entry = dst.add(name=t.name, data_type=TYPE_FP32)
            dims = [d if isinstance(d, int) else -1 for d in t.dims[1:]]
            if dims:
                entry.dims.extend(dims)
            else:  # a per-item scalar: Triton's convention is dims [1] reshaped to []
                entry.dims.append(1)
                entry.reshape.SetInParent()
    config.dynamic_batching.SetInParent()
    return config


def item_dims(entry: ConfigTensor, batching: bool = True) -> tuple[int, ...]:
    """A config tensor's dims per item, after its reshape (Triton's [1] -> [] for scalars).
    Without batching (max_batch_size 0) the config's dims lead with the batch axis, -1."""
    dims = tuple(entry.reshape.shape) if entry.HasField("reshape") else tuple(entry.dims)
    return dims if batching else dims[1:]


def verify(
    config: ModelConfig,
    name: str,
    inputs: list[GraphTensor],
    outputs: list[GraphTensor],
    where: str,
    batching: bool = True,
) -> None:
    """The config must describe this graph (what its task requires is the task rules' check).
    `batching`: the config's dims leave the batch axis out (max_batch_size > 0); otherwise they
    start with it, as -1. Raises ModelError with one line naming the first disagreement."""
    if config.name and config.name != name:
        raise ModelError(
            f"{where}: config name {config.name!r} differs from the directory {name!r}"
        )
    if config.platform and config.platform != PLATFORM:
        raise ModelError(f"{where}: platform {config.platform!r} is not served; use {PLATFORM!r}")
    if config.backend and config.backend != BACKEND:
        raise ModelError(f"{where}: backend {config.backend!r} is not served; use {BACKEND!r}")
    if not config.platform and not config.backend:
        raise ModelError(f"{where}: config names no platform; use platform: {PLATFORM!r}")
    if config.max_batch_size < 0:
        raise ModelError(f"{where}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if config.HasField("sequence_batching"):
        raise ModelError(f"{where}: sequence batching is not supported")
    if config.HasField("ensemble_scheduling"):
        raise ModelError(f"{where}: ensemble_scheduling needs platform: {ENSEMBLE!r}")
    for kind, entries, graph in (
        ("input", config.input, inputs),
        ("output", config.output, outputs),
    ):
        by_name = {t.name: t for t in graph}
        if len(entries) != len(graph) or set(by_name) != {e.name for e in entries}:
            raise ModelError(
                f"{where}: config {kind}s {[e.name for e in entries]} differ from the graph's "
                f"{[t.name for t in graph]}"
            )
        for entry in entries:
            g = by_name[entry.name]
            if entry.data_type != TYPE_FP32 or g.type != "tensor(float)":
                raise ModelError(
                    f"{where}: {kind} {entry.name!r} is {mc.DataType.Name(entry.data_type)} in "
                    f"the config and {g.type} in the graph; both must be FP32"
                )
            if not g.dims or isinstance(g.dims[0], int):
                raise ModelError(
                    f"{where}: graph {kind} {entry.name!r} has dims {list(g.dims)}: the first "
                    "axis must be a symbolic batch axis"
                )
            if not batching and (not entry.dims or entry.dims[0] != -1):
                raise ModelError(
                    f"{where}: {kind} {entry.name!r}: with max_batch_size 0 (no batching) the "
                    f"dims are the whole shape and must start with the batch axis, -1 (e.g. "
                    f"[-1, {', '.join(str(d) for d in g.dims[1:])}]); got {list(entry.dims)}"
                )
            dims = item_dims(entry, batching)
            if tuple(g.dims[1:]) != dims:
                raise ModelError(
                    f"{where}: {kind} {entry.name!r} has dims {list(dims)} in the config but "
                    f"{list(g.dims[1:])} (after the batch axis) in the graph"
                )


def complete(config: ModelConfig, name: str, settings: Settings) -> ModelConfig:
    """The effective config: a copy with the service's settings where the file is silent."""
    out = ModelConfig()
    out.CopyFrom(config)
    out.name = name
    if is_ensemble(out):
        # An ensemble has no backend, batcher or instances of its own (its steps do), and its
        # ensemble_scheduling shares a oneof with dynamic_batching: nothing of those is added.
        if out.max_batch_size == 0 and not settings.strict_model_config:
            out.max_batch_size = settings.max_batch_size
        if not out.HasField("version_policy"):
            out.version_policy.latest.num_versions = 1
        return out
    if not out.platform:
        out.platform = PLATFORM
    if not out.backend:
        out.backend = BACKEND
    if out.max_batch_size == 0 and not settings.strict_model_config:
        # Triton's auto-complete: without a strict config, an unset (0) max_batch_size of a
        # model whose graph batches is filled in (its --backend-config default-max-batch-size).
        out.max_batch_size = settings.max_batch_size
    if not out.HasField("version_policy"):
        out.version_policy.latest.num_versions = 1  # Triton's default
    if out.max_batch_size > 0:  # a model that does not batch has no dynamic batcher to fill in
        db = out.dynamic_batching
        if not out.HasField("dynamic_batching"):
            db.max_queue_delay_microseconds = settings.max_queue_delay_us
        policy = db.default_queue_policy
        if policy.max_queue_size == 0:
            policy.max_queue_size = settings.max_queue_size
        if policy.default_timeout_microseconds == 0:
            policy.default_timeout_microseconds = round(settings.request_timeout_s * 1e6)
    if not out.instance_group:  # Triton's default: where the model can run (GPU if there is one)
        out.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    return out


def check_limits(config: ModelConfig, where: str, settings: Settings, versions: int) -> None:
    """Refuse an effective config that asks for more than the service allows (settings
    LIMIT_*), before anything is allocated: one line naming the field, the value and the
    limit."""
    db = config.dynamic_batching
    policy = db.default_queue_policy
    checks = (
        ("max_batch_size", config.max_batch_size, settings.limit_batch_size, "LIMIT_BATCH_SIZE"),
        (
            "dynamic_batching.max_queue_delay_microseconds",
            db.max_queue_delay_microseconds,
            settings.limit_queue_delay_us,
            "LIMIT_QUEUE_DELAY_US",
        ),
        (
            "default_queue_policy.max_queue_size",
            policy.max_queue_size,
            settings.limit_queue_size,
            "LIMIT_QUEUE_SIZE",
        ),
        (
            "default_queue_policy.default_timeout_microseconds",
            policy.default_timeout_microseconds,
            round(settings.limit_timeout_s * 1e6),
            "LIMIT_TIMEOUT_S",
        ),
        (
            "instance_group count",
            sum(max(g.count, 1) for g in config.instance_group),
            settings.limit_instances,
            "LIMIT_INSTANCES",
        ),
        ("versions to serve (version_policy)", versions, settings.limit_versions, "LIMIT_VERSIONS"),
    )
    for field, value, limit, setting in checks:
        if value > limit:
            raise ModelError(f"{where}: {field} {value} exceeds the limit {limit} ({setting})")
    if not config.max_batch_size and config.HasField("dynamic_batching"):
        raise ModelError(f"{where}: dynamic_batching needs max_batch_size > 0 (0: no batching)")


def instance_kind(config: ModelConfig) -> str:
    """Where instance_group asks the model to run: "gpu", "cpu" or "auto"."""
    kinds = {g.kind for g in config.instance_group}
    if mc.ModelInstanceGroup.KIND_GPU in kinds:
        return "gpu"
    if kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        return "cpu"
    return "auto"


def scheduling(config: ModelConfig, where: str, settings: Settings) -> Scheduling:
    """The batcher's parameters from an effective config; refuses values that cannot work. A
    model that does not batch (max_batch_size 0) runs each request alone, queued by the
    service's defaults, with at most LIMIT_BATCH_SIZE rows."""
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    if not config.max_batch_size:
        return Scheduling(
            max_batch_size=0,
            max_queue_delay_us=0,
            preferred_batch_sizes=(),
            max_queue_size=settings.max_queue_size,
            timeout_s=settings.request_timeout_s,
            delay_on_timeout=False,
            instances=instances,
            request_items=settings.limit_batch_size,
        )
    db = config.dynamic_batching
    policy = db.default_queue_policy
    preferred = tuple(sorted(set(db.preferred_batch_size)))
    if any(p < 1 or p > config.max_batch_size for p in preferred):
        raise ModelError(
            f"{where}: preferred_batch_size {list(preferred)} must lie in "
            f"[1, max_batch_size {config.max_batch_size}]"
        )
    return Scheduling(
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preferred_batch_sizes=preferred,
        max_queue_size=policy.max_queue_size,
        timeout_s=policy.default_timeout_microseconds / 1e6,
        delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
        instances=instances,
        request_items=config.max_batch_size,
    )


def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions `version_policy` serves out of those on disk, ascending."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        chosen = list(available)
    elif which == "specific":
        chosen = [v for v in available if v in set(policy.specific.versions)]
    else:
        n = policy.latest.num_versions if which == "latest" else 1
        chosen = sorted(available)[-max(n, 1) :]
    return sorted(chosen)


def to_json(message: Any) -> dict[str, Any]:
    """Triton's JSON form of a config: field names as in model_config.proto, enums by name, and
    64-bit integers as JSON numbers (protobuf's own JSON writes them as strings, which Triton's
    clients, perf_analyzer among them, do not read)."""
    return {f.name: _field_json(f, v) for f, v in message.ListFields()}


def _field_json(field: Any, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        inner = field.message_type.fields_by_name["value"]
        return {k: _single_json(inner, v) for k, v in value.items()}
    if field.is_repeated:
        return [_single_json(field, v) for v in value]
    return _single_json(field, value)


def _single_json(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return to_json(value)
    if field.type == field.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def tensors_of(config: ModelConfig, kind: str) -> list[Tensor]:
    """The config's inputs or outputs as contract tensors (per-item dims)."""
    entries = config.input if kind == "input" else config.output
    return [Tensor(e.name, item_dims(e, config.max_batch_size > 0)) for e in entries]
