"""The routing table: every served version keyed by (name, version), and the atomic switch that
changes it. Model control (control.py) builds versions and calls `switch` and `remove`; requests
call `get`.

The table is replaced, never mutated in place, so a reader on the event loop always sees one
consistent set; `switch` routes a model to its new versions in one step, and the versions left
out drain (what they accepted finishes on them). An ensemble whose step model changed forgets
its cached answers at that moment.

The response cache (CACHE_SIZE_BYTES, service/models/cache.py) is the registry's: one per
process, shared by every version whose config enables it; a version's entries go with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from service.errors import NotFound, Unavailable
from service.memory import release_memory
from service.metrics import Metrics
from service.models import repository
from service.models.cache import ResponseCache
from service.models.served import Served
from service.settings import Settings

log = logging.getLogger("coordconv.registry")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # name -> version -> a READY version (replaced, never mutated in place).
        self.versions: dict[str, dict[str, Served]] = {}
        self.loading: set[str] = set()  # names a load is running for
        self.requested: set[str] = set()  # models asked for at start: readiness waits for them
        self.started = False
        self.stopping = False
        self.cache = ResponseCache(settings.cache_size_bytes) if settings.cache_size_bytes else None
        self._drains: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping and self.requested <= set(self.versions)

    def get(self, name: str, version: str | None = None) -> Served:
        """The version that answers a request: the one asked for, else the highest ready one."""
        versions = self.versions.get(name)
        if not versions:
            if name in self.loading:
                raise Unavailable(f"model {name!r} is loading; retry shortly", retry_after=1)
            if self.stopping:
                raise Unavailable("the server is shutting down")
            known = ", ".join(sorted(self.versions)) or "none"
            raise NotFound(f"unknown model {name!r}; loaded models: {known}")
        if version is None:
            return versions[max(versions, key=int)]
        number = repository.version_number(version)
        m = None if number is None else versions.get(str(number))  # "01" is version 1
        if m is None:
            available = sorted(versions, key=int)
            raise NotFound(
                f"model {name!r} version {version[:20]!r} is not served; available: {available}"
            )
        return m

    def all_versions(self, name: str | None = None) -> list[Served]:
        if name is None:
            return [m for n in sorted(self.versions) for m in self.sorted(n)]
        self.get(name)  # 404 or 503 with the usual message
        return self.sorted(name)

    def sorted(self, name: str) -> list[Served]:
        vs = self.versions.get(name, {})
        return [vs[v] for v in sorted(vs, key=int)]

    def statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """This process's `model_stats` entries (Triton's statistics extension)."""
        if name is None:
            chosen = self.all_versions()
        elif version is None:
            chosen = self.all_versions(name)
        else:
            chosen = [self.get(name, version)]
        return [m.stats.as_dict() for m in chosen]

    def dependents(self, name: str) -> list[str]:
        """The served ensembles that have `name` as a step."""
        return sorted(
            n
            for n, vs in self.versions.items()
            for m in list(vs.values())[:1]
            if any(s.model == name for s in m.steps)
        )

    def _steps_changed(self, name: str) -> None:
        """`name` now routes elsewhere (or nowhere): the ensembles that run it forget their
        cached answers."""
        for user in self.dependents(name):
            for m in self.versions.get(user, {}).values():
                m.steps_changed()

    def switch(self, name: str, new: dict[str, Served]) -> None:
        """Route `name` to `new` in one step; its versions left out drain."""
        current = self.versions.get(name, {})
        self.versions = {**self.versions, name: new}  # the switch
        self._steps_changed(name)
        outgoing = [m for m in current.values() if m not in new.values()]
        for m in outgoing:
            self._later(self.drain(m))
        log.info(
            "%s %s: serving versions %s%s",
            "loaded" if not current else "reloaded",
            name,
            sorted(new, key=int),
            f" (draining {[m.version for m in outgoing]})" if outgoing else "",
        )

    async def remove(self, name: str) -> None:
        """Stop routing to `name` and drain every version of it (waits for the drain)."""
        current = self.versions.get(name)
        if not current:
            raise NotFound(f"model {name!r} is not loaded")
        self.versions = {n: vs for n, vs in self.versions.items() if n != name}
        self._steps_changed(name)
        self.requested.discard(name)
        await asyncio.gather(*(self.drain(m, give_back=False) for m in current.values()))
        log.info("unloaded %s (versions %s)", name, sorted(current, key=int))
        for user in self.dependents(name):
            log.warning("ensemble %s is unavailable until %s is loaded again", user, name)
        del current
        await give_back_memory()

    async def drain(self, m: Served, give_back: bool = True) -> None:
        # A request can wait for its queue timeout and then for one call.
        await m.drain(self.settings.request_timeout_s + 30)
        if give_back:
            await give_back_memory()

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def shed_queued(self) -> None:
        """Answer every request still queued with 503 + Retry-After (the drain is running out);
        calls already running finish."""
        for versions in self.versions.values():
            for m in versions.values():
                m.shed("the server is shutting down; retry (on another instance)")

    async def stop(self) -> None:
        """Close every version (and wait for the drains under way)."""
        self.stopping = True
        everything = [m for vs in self.versions.values() for m in vs.values()]
        self.versions = {}
        await asyncio.gather(
            *(m.close() for m in everything), *self._drains, return_exceptions=True
        )


async def give_back_memory() -> None:
    """After versions are closed (which lets go of their sessions at once: nothing else holds
    them), hand the freed heap back to the system, so an unload shows in the RSS. In a thread:
    malloc_trim walks the heap (ctypes releases the GIL), which would stall the event loop."""
    await asyncio.to_thread(release_memory)
