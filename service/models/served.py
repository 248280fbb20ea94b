"""What every servable meets, and what a model's versions and an ensemble's share: the lifecycle

    WARMING -> READY -> DRAINING -> CLOSED

`hold` counts the requests that hold a version, `drain` waits for them to finish and then closes
it, so a version that is unloaded or replaced finishes everything it accepted; `request` is one
request on a version, held and counted in its statistics; `shed` fails what waits in its queue;
`describe` is its /v1/models entry. Callers ask a servable (`steps`, `shed`, `unavailable`)
instead of testing which kind it is.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import numpy as np

from coordconv.triton import Tensor
from service.metrics import Metrics
from service.models.cache import ResponseCache
from service.models.config import ModelConfig, Scheduling
from service.models.statistics import ModelStats

log = logging.getLogger("coordconv.model")
Outputs = tuple[np.ndarray, ...]


class State(enum.Enum):
    WARMING = "WARMING"  # opened and verified, running its warm-up (not routed to yet)
    READY = "READY"  # routed to
    DRAINING = "DRAINING"  # unrouted; finishing what it accepted
    CLOSED = "CLOSED"


_loads = itertools.count(1)


def next_serial() -> int:
    return next(_loads)


def tensor_info(t: Tensor) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]}


class Served:
    """A served version (a model's, an ensemble's). Subclasses are dataclasses that set these
    fields and implement `start`, `infer_tensors` and `close`."""

    name: str
    version: str
    task: str
    sha256: str
    config: ModelConfig  # the effective config
    scheduling: Scheduling
    inputs: list[Tensor]
    outputs: list[Tensor]
    stats: ModelStats
    fingerprint: tuple[object, ...]
    state: State
    holders: int
    cache: ResponseCache | None
    cache_owner: int
    serial: int  # this load of this version, unique in the process (`next_serial`)
    _released: asyncio.Event
    steps: Sequence[Any]  # the pipeline's steps (an ensemble's); none for a model

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
    def provider(self) -> str:
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """Why a request would be refused now although the version is routed to, or None."""
        return None

    def rule_input(self, name: str) -> str:
        """The model input whose value rules apply to input `name` (an ensemble's input: the
        step input it feeds)."""
        return name

    def steps_changed(self) -> None:
        """A model this one runs was loaded, reloaded or unloaded."""

    def shed(self, message: str) -> None:
        """Fail what waits in this version's queue with 503 + Retry-After."""

    def start(self, metrics: Metrics, cache: ResponseCache | None = None) -> None:
        raise NotImplementedError

    async def infer_tensors(self, xs: list[np.ndarray]) -> Outputs:
        raise NotImplementedError

    async def close(self, message: str = "the server is shutting down") -> None:
        raise NotImplementedError

    def _use_cache(self, cache: ResponseCache | None) -> None:
        """With the server's response cache, and response_cache enabled in the config, this
        version's answers are cached (a new owner: a reload starts empty)."""
        if cache is not None and self.config.response_cache.enable:
            self.cache, self.cache_owner = cache, cache.register()

    def _drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.purge(self.cache_owner)
            self.cache = None

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

    @contextmanager
    def request(self) -> Iterator[Self]:
        """One request on this version: held, and counted in its statistics (success or
        failure, from arrival to answer)."""
        start = time.perf_counter_ns()
        with self.hold():
            try:
                yield self
            except BaseException:
                self.stats.request_done(False, time.perf_counter_ns() - start)
                raise
            self.stats.request_done(True, time.perf_counter_ns() - start)

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

    def details(self) -> dict[str, Any]:
        """What the /v1/models entry says beyond what every servable says."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry."""
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "task": self.task,
            "sha256": self.sha256,
            "provider": self.provider,
            "max_batch_size": self.scheduling.max_batch_size,
            "inputs": [tensor_info(t) for t in self.inputs],
            "outputs": [tensor_info(t) for t in self.outputs],
            **self.details(),
        }
