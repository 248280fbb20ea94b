"""Ensembles: `platform: "ensemble"` with Triton's `ensemble_scheduling`, a pipeline of other
models served as one model.

    ensemble_scheduling { step [
      { model_name: "render" model_version: -1
        input_map { key: "coords" value: "coords" }      # step model input: ensemble tensor
        output_map { key: "image" value: "image" } },    # step model output: ensemble tensor
      ... ] }

A request's inputs are the ensemble's input tensors; each step runs once every tensor it reads
exists (steps that do not depend on each other run at once), through its model's own version:
its batcher, its response cache, its statistics (a request counted there as any other), held
so that an unload or reload lets it finish. The ensemble's outputs are tensors some step wrote.
`model_version: -1` is the highest ready version at the time of the request.

Refused with one line at load (`parse` for the config alone, `check_step` against each step's
version as served now): no steps, a tensor written twice or never, a step that reads a tensor
nothing writes, a cycle, an ensemble input nothing reads, a step model that is unknown, is
itself an ensemble or is the ensemble, input_map keys other than the step model's inputs,
output_map keys it does not have, tensors whose types or per-item shapes differ between the
ensemble and a step (or between the step that writes and the step that reads), and a
max_batch_size larger than a step's. A step model unloaded later is Triton's choice too: the
ensemble stays loaded, is not ready, and answers 503 naming the step until it is back (a step
model reloaded with another signature is refused the same way, per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordconv.contract import MODEL_NAME_RE, Tensor
from service.errors import ModelError, NotFound, ServiceError, Unavailable
from service.metrics import Metrics
from service.models import config as model_config
from service.models.batcher import Disconnected, Outputs
from service.models.cache import ResponseCache
from service.models.config import ModelConfig, Scheduling
from service.models.statistics import ModelStats
from service.models.version import Held, ModelVersion, State, tensor_info

log = logging.getLogger("coordconv.ensemble")
TASK = "ensemble"


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


Resolver = Callable[[str, str | None], Any]  # the registry's get: name, version -> served version


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
    m: Any,
    shapes: dict[str, Tensor],
    max_batch_size: int,
    where: str,
) -> None:
    """Step `step` served by `m`, given the ensemble tensors known so far (`shapes`: name ->
    tensor; a step's outputs are added): one line for the first mismatch."""
    label = f"{where}: {step.label}"
    if not isinstance(m, ModelVersion):
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


@dataclass(eq=False)
class EnsembleVersion(Held):
    """One version of an ensemble, served: it holds no session, only its steps, resolved
    through the registry on every request."""

    name: str
    version: str
    config: ModelConfig  # the effective config
    scheduling: Scheduling
    steps: list[Step]
    waves: list[list[Step]]
    inputs: list[Tensor]
    outputs: list[Tensor]
    resolve: Resolver
    stats: ModelStats
    sha256: str  # of the effective config: what X-Model-SHA256 names for an ensemble
    feeds: dict[str, str]  # ensemble input -> the step input it feeds (whose value rules apply)
    tensors: dict[str, Tensor]  # every ensemble tensor's type and per-item shape, checked at load
    fingerprint: tuple[object, ...] = ()
    state: State = State.WARMING
    holders: int = 0
    batcher: None = None  # no batcher of its own: its steps have theirs
    cache: ResponseCache | None = None
    cache_owner: int = 0
    metrics: Metrics | None = None
    task: str = TASK
    metadata: dict[str, str] = field(default_factory=dict)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _fitting: weakref.WeakSet[ModelVersion] = field(default_factory=weakref.WeakSet)

    @property
    def ready(self) -> bool:
        return self.state is State.READY and self.unavailable() is None

    @property
    def input(self) -> Tensor:
        return self.inputs[0]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def ok_threshold(self) -> float:
        p = self.config.parameters.get("coordconv.ok_threshold")
        try:
            return float(p.string_value) if p is not None else 0.5
        except ValueError:
            return 0.5

    @property
    def provider(self) -> str:
        """Where its steps run (their execution providers), as far as they are served now."""
        found = set()
        for step in self.steps:
            try:
                found.add(self.resolve(step.model, step.version).provider)
            except ServiceError:
                continue
        return ",".join(sorted(found)) or "unavailable"

    def input_contract(self, name: str) -> str:
        return self.feeds.get(name, name)

    def unavailable(self) -> str | None:
        """Why a request would be refused now (a step model gone or changed), or None."""
        for step in self.steps:
            try:
                self._step_version(step)
            except Unavailable as exc:
                return exc.message
        return None

    def _step_version(self, step: Step) -> ModelVersion:
        try:
            m = self.resolve(step.model, step.version)
        except (NotFound, Unavailable) as exc:
            raise Unavailable(
                f"ensemble {self.name!r}: {step.label} is not available: {exc.message}"
            ) from None
        if m not in self._fitting:  # each served version checked once
            try:
                check_step(
                    step, m, dict(self.tensors), self.config.max_batch_size, f"model {self.name}"
                )
            except ModelError as exc:
                raise Unavailable(
                    f"ensemble {self.name!r} cannot run on its steps as served now: {exc}"
                ) from None
            self._fitting.add(m)
        return m

    def start(self, metrics: Metrics, cache: ResponseCache | None = None) -> None:
        # Its steps count their own work; the ensemble's requests and runs get Triton's series too.
        self.metrics = metrics
        metrics.attach(self.stats)
        if cache is not None and self.config.response_cache.enable:
            self.cache, self.cache_owner = cache, cache.register()
        self.state = State.READY

    async def infer_tensors(
        self, xs: list[np.ndarray], disconnected: Disconnected | None = None
    ) -> Outputs:
        """Run the pipeline on the request's inputs (in `inputs` order): the ensemble's
        outputs, in `outputs` order.

        Every step's version is resolved once, before anything else, and held to the end: a
        step that is not served now refuses the request (503) even where the cache knows the
        answer, every step runs on the version resolved here, and a cached answer is keyed by
        those versions (each load of each), so no answer outlives a version that computed it."""
        chosen = [self._step_version(step) for step in self.steps]
        with contextlib.ExitStack() as held:
            for m in dict.fromkeys(chosen):
                held.enter_context(m.hold())
            versions = {step.index: m for step, m in zip(self.steps, chosen, strict=True)}

            async def run(values: tuple[np.ndarray, ...]) -> Outputs:
                tensors = {t.name: x for t, x in zip(self.inputs, values, strict=True)}
                for wave in self.waves:
                    steps = [
                        self._run_step(s, versions[s.index], tensors, disconnected) for s in wave
                    ]
                    if len(steps) == 1:
                        results = [await steps[0]]
                    else:
                        done = await asyncio.gather(*steps, return_exceptions=True)
                        for r in done:
                            if isinstance(r, BaseException):
                                raise r
                        results = [r for r in done if not isinstance(r, BaseException)]
                    for r in results:
                        tensors.update(r)
                self.stats.executed(len(values[0]))
                return tuple(tensors[t.name] for t in self.outputs)

            if self.cache is None:
                return await run(tuple(xs))
            computed_by = tuple(m.serial for m in chosen)
            return await self.cache.infer(
                self.cache_owner, xs, run, self.stats, context=computed_by
            )

    def steps_changed(self) -> None:
        """A step model was loaded, reloaded or unloaded: its cached answers go at once (the
        keys would no longer match anyway; this gives their bytes back)."""
        if self.cache is not None:
            self.cache.clear(self.cache_owner)

    async def _run_step(
        self,
        step: Step,
        m: ModelVersion,
        tensors: dict[str, np.ndarray],
        disconnected: Disconnected | None,
    ) -> dict[str, np.ndarray]:
        xs = [tensors[step.inputs[t.name]] for t in m.inputs]
        start = time.perf_counter_ns()
        try:
            outs = await m.infer_tensors(xs, disconnected)
        except BaseException:
            m.stats.request_done(False, time.perf_counter_ns() - start)
            raise
        m.stats.request_done(True, time.perf_counter_ns() - start)
        return {
            step.outputs[t.name]: y
            for t, y in zip(m.outputs, outs, strict=True)
            if t.name in step.outputs
        }

    async def close(self, message: str = "the server is shutting down") -> None:
        del message
        if self.cache is not None:
            self.cache.purge(self.cache_owner)
            self.cache = None
        if self.metrics is not None:
            self.metrics.detach(self.stats)
            self.metrics = None
        self.state = State.CLOSED
        log.info("unloaded ensemble %s version %s", self.name, self.version)

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry."""
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "task": self.task,
            "arch": TASK,
            "split": None,
            "sha256": self.sha256,
            "provider": self.provider,
            "max_batch_size": self.scheduling.max_batch_size,
            "inputs": [tensor_info(t) for t in self.inputs],
            "outputs": [tensor_info(t) for t in self.outputs],
            "metrics": {},
            "trained_at": None,
            "steps": [s.model for s in self.steps],
        }


def open_ensemble(
    name: str,
    version: int,
    config: ModelConfig,
    resolve: Resolver,
    settings: Any,
    fingerprint: tuple[object, ...] = (),
) -> EnsembleVersion:
    """Check an effective ensemble config against the step versions served now and build the
    served version (no blocking work: on the event loop). Raises ModelError with one line."""
    where = f"model {name}"
    steps, waves = parse(config, where)
    model_config.check_warmup(config, where, settings)
    tensors = check_steps(config, waves, resolve, where)
    inputs = model_config.tensors_of(config, "input")
    outputs = model_config.tensors_of(config, "output")
    feeds: dict[str, str] = {}
    for step in steps:
        for own, tensor in step.inputs.items():
            if tensor in {t.name for t in inputs}:
                feeds.setdefault(tensor, own)
    scheduling = Scheduling(
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=0,
        preferred_batch_sizes=(),
        max_queue_size=settings.limit_queue_size,  # its steps' queues bound it
        timeout_s=settings.request_timeout_s,
        delay_on_timeout=False,
        instances=1,
        request_items=config.max_batch_size,
    )
    digest = hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
    return EnsembleVersion(
        name=name,
        version=str(version),
        config=config,
        scheduling=scheduling,
        steps=steps,
        waves=waves,
        inputs=inputs,
        outputs=outputs,
        resolve=resolve,
        stats=ModelStats(name, str(version)),
        sha256=digest,
        feeds=feeds,
        tensors=tensors,
        fingerprint=fingerprint,
    )
