"""An ensemble's pipeline (Triton's `ensemble_scheduling`), read from its config and checked
against the versions that serve its steps; the served ensemble is ensemble.py's.

    ensemble_scheduling { step [
      { model_name: "render" model_version: -1
        input_map { key: "coords" value: "coords" }      # step model input: ensemble tensor
        output_map { key: "image" value: "image" } },    # step model output: ensemble tensor
      ... ] }

Refused with one line at load (`parse` for the config alone, `check_step` against each step's
version as served now): no steps, a tensor written twice or never, a step that reads a tensor
nothing writes, a cycle, an ensemble input nothing reads, a step model that is unknown, is
itself an ensemble or is the ensemble, input_map keys other than the step model's inputs,
output_map keys it does not have, tensors whose types or per-item shapes differ between the
ensemble and a step (or between the step that writes and the step that reads), and a
max_batch_size larger than a step's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordconv.triton import MODEL_NAME_RE, Tensor
from service.errors import ModelError, ServiceError
from service.models import config as model_config
from service.models.config import ModelConfig
from service.models.served import Served


@dataclass(frozen=True)
class Step:
    index: int
    model: str
    version: str | None  # None: the highest ready version (model_version -1)
    inputs: dict[str, str]  # step model input -> ensemble tensor
    outputs: dict[str, str]  # step model output -> ensemble tensor

    @property
    def label(self) -> str:
        at = "" if self.version is None else f" version {self.version}"
        return f"step {self.index} ({self.model}{at})"


Resolver = Callable[[str, str | None], Served]  # the registry's get: name, version -> version


def parse(config: ModelConfig, where: str) -> tuple[list[Step], list[list[Step]]]:
    """The steps of an ensemble config and the order they run in (waves of steps whose inputs
    exist), from the config alone; ModelError with one line for the first problem."""
    name = config.name
    if config.backend:
        raise ModelError(f"{where}: an ensemble has no backend (got {config.backend!r})")
    if config.max_batch_size < 1:
        raise ModelError(
            f"{where}: an ensemble needs max_batch_size >= 1 (at most its steps'), got "
            f"{config.max_batch_size}"
        )
    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        raise ModelError(f"{where}: platform 'ensemble' needs ensemble_scheduling with steps")
    if not config.input or not config.output:
        raise ModelError(f"{where}: an ensemble needs at least one input and one output")
    inputs = [e.name for e in config.input]
    outputs = [e.name for e in config.output]
    names = inputs + outputs
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelError(f"{where}: ensemble tensor names must be unique; {dupes} repeat")
    for entry in [*config.input, *config.output]:
        if entry.data_type != model_config.TYPE_FP32:
            raise ModelError(
                f"{where}: tensor {entry.name!r} is "
                f"{model_config.mc.DataType.Name(entry.data_type)}; only TYPE_FP32 is served"
            )
        if any(d < 1 for d in entry.dims):
            raise ModelError(
                f"{where}: tensor {entry.name!r} has dims {list(entry.dims)}; an ensemble's "
                "dims are fixed (no -1) and leave the batch axis out"
            )
    steps = []
    for i, s in enumerate(config.ensemble_scheduling.step):
        label = f"{where}: step {i}"
        if not MODEL_NAME_RE.match(s.model_name):
            raise ModelError(f"{label}: model_name {s.model_name[:80]!r} is not a model name")
        if s.model_name == name:
            raise ModelError(f"{label}: the ensemble cannot be a step of itself")
        if s.model_version < -1:
            raise ModelError(f"{label}: model_version must be -1 (latest) or a version number")
        if not s.input_map or not s.output_map:
            raise ModelError(f"{label} ({s.model_name}): input_map and output_map must be set")
        version = None if s.model_version == -1 else str(s.model_version)
        steps.append(Step(i, s.model_name, version, dict(s.input_map), dict(s.output_map)))
    writer: dict[str, Step] = {}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ModelError(f"{where}: {step.label} writes the ensemble input {tensor!r}")
            if tensor in writer:
                raise ModelError(
                    f"{where}: tensor {tensor!r} is written by both {writer[tensor].label} and "
                    f"{step.label}"
                )
            writer[tensor] = step
    for step in steps:
        for tensor in step.inputs.values():
            if tensor not in writer and tensor not in inputs:
                raise ModelError(
                    f"{where}: {step.label} reads tensor {tensor!r}, which neither an ensemble "
                    "input nor any step provides"
                )
    unwritten = [o for o in outputs if o not in writer]
    if unwritten:
        raise ModelError(f"{where}: no step writes the ensemble output(s) {unwritten}")
    read = {t for s in steps for t in s.inputs.values()}
    unread = [i for i in inputs if i not in read]
    if unread:
        raise ModelError(f"{where}: no step reads the ensemble input(s) {unread}")
    waves: list[list[Step]] = []
    have, left = set(inputs), list(steps)
    while left:
        wave = [s for s in left if set(s.inputs.values()) <= have]
        if not wave:
            raise ModelError(
                f"{where}: the steps {[s.index for s in left]} wait on each other (a cycle)"
            )
        waves.append(wave)
        have |= {t for s in wave for t in s.outputs.values()}
        left = [s for s in left if s not in wave]
    return steps, waves


def check_step(
    step: Step,
    m: Served,
    shapes: dict[str, Tensor],
    max_batch_size: int,
    where: str,
) -> None:
    """Step `step` served by `m`, given the ensemble tensors known so far (`shapes`: name ->
    tensor; a step's outputs are added): one line for the first mismatch."""
    label = f"{where}: {step.label}"
    if model_config.is_ensemble(m.config):
        raise ModelError(f"{label}: model {m.name!r} is an ensemble; ensembles do not nest")
    takes = {t.name: t for t in m.inputs}
    gives = {t.name: t for t in m.outputs}
    unknown = sorted(set(step.inputs) - set(takes))
    if unknown:
        raise ModelError(
            f"{label}: input_map names {unknown}, which model {m.name!r} does not take (its "
            f"inputs: {sorted(takes)})"
        )
    unmapped = sorted(set(takes) - set(step.inputs))
    if unmapped:
        raise ModelError(f"{label}: input_map leaves the model's input(s) {unmapped} unmapped")
    unknown = sorted(set(step.outputs) - set(gives))
    if unknown:
        raise ModelError(
            f"{label}: output_map names {unknown}, which model {m.name!r} does not have (its "
            f"outputs: {sorted(gives)})"
        )
    for own, tensor in step.inputs.items():
        want, have = takes[own], shapes.get(tensor)
        if have is not None and (have.datatype, have.dims) != (want.datatype, want.dims):
            raise ModelError(
                f"{label}: tensor {tensor!r} is {have.datatype} {list(have.dims)} but model "
                f"{m.name!r} input {own!r} takes {want.datatype} {list(want.dims)}"
            )
    for own, tensor in step.outputs.items():
        got, have = gives[own], shapes.get(tensor)
        if have is not None and (have.datatype, have.dims) != (got.datatype, got.dims):
            raise ModelError(
                f"{label}: model {m.name!r} output {own!r} is {got.datatype} {list(got.dims)} "
                f"but the ensemble's tensor {tensor!r} is {have.datatype} {list(have.dims)}"
            )
        shapes[tensor] = Tensor(tensor, got.dims, got.datatype)
    if max_batch_size > m.scheduling.request_items:
        raise ModelError(
            f"{label}: the ensemble's max_batch_size {max_batch_size} exceeds model "
            f"{m.name!r}'s {m.scheduling.request_items}"
        )


def check_steps(
    config: ModelConfig, waves: list[list[Step]], resolve: Resolver, where: str
) -> dict[str, Tensor]:
    """Every step against the version that serves it now, in the order they run: every
    ensemble tensor (inputs, outputs and those between steps) with its type and shape."""
    shapes = {
        t.name: t
        for t in [
            *model_config.tensors_of(config, "input"),
            *model_config.tensors_of(config, "output"),
        ]
    }
    for wave in waves:
        for step in wave:
            try:
                m = resolve(step.model, step.version)
            except ServiceError as exc:
                raise ModelError(f"{where}: {step.label}: {exc.message}") from None
            check_step(step, m, shapes, config.max_batch_size, where)
    return shapes
