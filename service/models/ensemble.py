"""Ensembles: `platform: "ensemble"` with Triton's `ensemble_scheduling` (pipeline.py), a
pipeline of other models served as one model.

A request's inputs are the ensemble's input tensors; each step runs once every tensor it reads
exists (steps that do not depend on each other run at once), through its model's own version:
its batcher, its response cache, its statistics (a request counted there as any other), held
so that an unload or reload lets it finish. The ensemble's outputs are tensors some step wrote.
`model_version: -1` is the highest ready version at the time of the request.

A step model unloaded later is Triton's choice too: the ensemble stays loaded, is not ready, and
answers 503 naming the step until it is back (a step model reloaded with another signature is
refused the same way, per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordconv.triton import Tensor
from service.errors import ModelError, NotFound, ServiceError, Unavailable
from service.metrics import Metrics
from service.models import config as model_config
from service.models import warmup
from service.models.cache import ResponseCache
from service.models.config import ENSEMBLE, ModelConfig, Scheduling
from service.models.pipeline import Resolver, Step, check_step, check_steps, parse
from service.models.served import Outputs, Served, State, next_serial
from service.models.statistics import ModelStats
from service.settings import Settings

log = logging.getLogger("coordconv.ensemble")


@dataclass(eq=False)
class EnsembleVersion(Served):
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
    cache: ResponseCache | None = None
    cache_owner: int = 0
    metrics: Metrics | None = None
    task: str = ENSEMBLE
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    serial: int = field(default_factory=next_serial)
    _fitting: weakref.WeakSet[Served] = field(default_factory=weakref.WeakSet)

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

    def rule_input(self, name: str) -> str:
        return self.feeds.get(name, name)

    def unavailable(self) -> str | None:
        """Why a request would be refused now (a step model gone or changed), or None."""
        for step in self.steps:
            try:
                self._step_version(step)
            except Unavailable as exc:
                return exc.message
        return None

    def _step_version(self, step: Step) -> Served:
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
        self._use_cache(cache)
        self.state = State.READY

    async def infer_tensors(self, xs: list[np.ndarray]) -> Outputs:
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
                    steps = [self._run_step(s, versions[s.index], tensors) for s in wave]
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
        self, step: Step, m: Served, tensors: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One step on its version: a request there as any other (held and counted)."""
        xs = [tensors[step.inputs[t.name]] for t in m.inputs]
        with m.request():
            outs = await m.infer_tensors(xs)
        return {
            step.outputs[t.name]: y
            for t, y in zip(m.outputs, outs, strict=True)
            if t.name in step.outputs
        }

    async def close(self, message: str = "the server is shutting down") -> None:
        del message
        self._drop_cache()
        if self.metrics is not None:
            self.metrics.detach(self.stats)
            self.metrics = None
        self.state = State.CLOSED
        log.info("unloaded ensemble %s version %s", self.name, self.version)

    def details(self) -> dict[str, Any]:
        return {
            "arch": ENSEMBLE,
            "split": None,
            "metrics": {},
            "trained_at": None,
            "steps": [s.model for s in self.steps],
        }


def open_ensemble(
    name: str,
    version: int,
    config: ModelConfig,
    resolve: Resolver,
    settings: Settings,
    fingerprint: tuple[object, ...] = (),
) -> EnsembleVersion:
    """Check an effective ensemble config against the step versions served now and build the
    served version (no blocking work: on the event loop). Raises ModelError with one line."""
    where = f"model {name}"
    steps, waves = parse(config, where)
    warmup.check(config, where, settings)
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
