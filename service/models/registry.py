"""The live model registry: every served model version keyed by (name, version), and the model
control that changes it without a restart (Triton's modes and names):

- `none`: every model of the repository is loaded at start; the set never changes.
- `explicit`: only `--load-model` names (or `*`) at start; then `load` and `unload` requests.
- `poll`: like `none` at start, then the repository is rescanned every `repository_poll_secs`:
  a version directory that appeared (and stayed the same for one interval, so a copy in progress
  is not taken) is loaded, a removed one is drained and unloaded, a changed file is reloaded.

A load builds every new or changed version off the event loop (load -> verify -> warm up) while
the current versions keep serving; only when all of them are warm does the routing table switch,
in one step. Outgoing versions drain: what they accepted finishes on them. A broken new version
fails the load with one line and leaves the serving set as it was. Loads and unloads of one model
are serialised by a per-model lock (first come, first served), and each call carries what it
asked for: a config override applies to that load alone and is kept only if the load succeeds;
a plain load re-reads config.pbtxt.

Every repository read goes through `Reads` (threads of its own, a time limit), so a hanging file
system fails the load that touched it and nothing else; configs are refused when they ask for
more than the LIMIT_* settings before anything is allocated; unloading a version lets go of its
session and threads, and the memory is handed back (a collection and malloc_trim).

Ensembles (`platform: "ensemble"`, service/models/ensemble.py) are served beside the models
they run: loading one loads its step models first where they are not loaded (as Triton does),
then checks its steps against the versions served; at start they load after every other model.
Unloading a step model is allowed (as in Triton): the ensemble stays, is not ready, shows
UNAVAILABLE in the index with the reason, and answers 503 until the step is back.

The response cache (CACHE_SIZE_BYTES, service/models/cache.py) is the registry's: one per
process, shared by every version whose config enables it; a version's entries go with it.

With `--workers N` each worker has its own registry; service/cluster.py feeds every one of them
the same loads and unloads in the same order (a shared control log), through `load` and `unload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import (
    BadRequest,
    LoadCancelled,
    ModelError,
    NotFound,
    RepositoryError,
    Unavailable,
)
from service.memory import release_memory
from service.metrics import Metrics
from service.models import config as model_config
from service.models import ensemble, repository
from service.models.cache import ResponseCache
from service.models.ensemble import EnsembleVersion, open_ensemble
from service.models.reads import Reads
from service.models.version import ModelVersion, State, open_version, usable_providers
from service.settings import Settings

log = logging.getLogger("coordconv.registry")
Served = ModelVersion | EnsembleVersion  # what the routing table holds


@dataclass
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repo = Path(settings.model_dir)
        self.mode = settings.model_control_mode
        # The routing table: name -> version -> a READY version. Replaced, never mutated in
        # place, so a reader on the event loop always sees one consistent set.
        self.versions: dict[str, dict[str, Served]] = {}
        self.loading: set[str] = set()
        self.failed: dict[str, str] = {}  # name -> why its last load failed
        # name -> the config override its last successful load was given (kept for reloads
        # of unchanged files, e.g. in poll mode; a plain load drops it).
        self.overrides: dict[str, model_config.ModelConfig] = {}
        self.requested: set[str] = set()  # models asked for at start: readiness waits for them
        self.providers: list[str] = []
        self.provider_problem: str | None = None
        self.started = False
        self.stopping = False
        # Set once the server is going away: loads stop between warm-up runs (their control
        # calls answer 503) and new control calls are refused, so no way out waits on a load.
        self.closing = False
        self.stop_loads = threading.Event()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._drains: set[asyncio.Task[None]] = set()
        self._poll_task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[object, ...]] = {}  # poll: fingerprint at the last scan
        self._applied: dict[str, tuple[object, ...]] = {}  # poll: fingerprint last acted on
        self._missing: set[str] = set()  # poll: gone at the last scan
        self.reads = Reads(settings.repository_timeout_s)
        self.cache = ResponseCache(settings.cache_size_bytes) if settings.cache_size_bytes else None

    # Start and stop

    async def start(self) -> None:
        """Load the start-up set. Raises RepositoryError with one line on any problem."""
        s = self.settings
        repository.check_root(self.repo)
        try:
            on_disk = await self.reads.run("the repository", repository.model_names, self.repo)
        except ModelError as exc:
            raise RepositoryError(str(exc)) from None
        if self.mode == "explicit":
            wanted = on_disk if "*" in s.load_model else list(dict.fromkeys(s.load_model))
        else:
            if s.load_model:
                raise RepositoryError("--load-model needs --model-control-mode explicit")
            wanted = on_disk
            if not wanted:
                raise RepositoryError(
                    f"model repository {self.repo} holds no models (expected "
                    "<name>/config.pbtxt and <name>/<version>/model.onnx)"
                )
        probe = await self._probe(wanted)
        self.providers, self.provider_problem = usable_providers(s, probe)
        if self.provider_problem:
            if s.require_gpu:
                raise RepositoryError(f"REQUIRE_GPU is set but {self.provider_problem}")
            log.warning("%s: serving on CPU", self.provider_problem)
        self.requested = set(wanted)
        for name in await self._ensembles_last(wanted):
            try:
                await self.load(name, at_start=True)
            except (ModelError, NotFound, BadRequest) as exc:
                raise RepositoryError(str(exc)) from None
        if self.mode == "poll":
            for name in on_disk:
                with contextlib.suppress(ModelError, NotFound, BadRequest):
                    files = await self.reads.run(name, repository.scan, self.repo, name)
                    self._seen[name] = self._applied[name] = files.fingerprint
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())
        self.started = True
        loaded = [f"{n}:{v}" for n, vs in sorted(self.versions.items()) for v in vs]
        log.info(
            "serving %d model versions from %s (%s mode) on %s: %s",
            len(loaded),
            self.repo,
            self.mode,
            ", ".join(self.providers),
            ", ".join(loaded),
        )

    async def _ensembles_last(self, names: list[str]) -> list[str]:
        """`names` with the ensembles moved to the end, so their steps load first (a config
        that cannot be read is left where it is: its load says what is wrong)."""
        plain: list[str] = []
        ensembles: list[str] = []
        for name in names:
            into = plain
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.reads.run(name, repository.scan, self.repo, name)
                if repository.is_ensemble_text(files.config_text):
                    into = ensembles
            into.append(name)
        return plain + ensembles

    async def _probe(self, names: Iterable[str]) -> bytes | None:
        """One ONNX file's bytes, to find out which execution providers load here."""
        limit = self.settings.limit_model_bytes
        for name in names:
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.reads.run(name, repository.scan, self.repo, name)
                if files.versions:
                    path = files.versions[max(files.versions)]
                    return await self.reads.run(name, repository.read_model, self.repo, path, limit)
        return None

    def begin_shutdown(self) -> None:
        """The server is going away: cancel every load in progress (between two warm-up runs)
        and refuse new model control; serving goes on as long as the server serves."""
        self.closing = True
        self.stop_loads.set()

    def _check_open(self, what: str) -> None:
        if self.closing:
            raise Unavailable(
                f"the server is shutting down: {what} refused; retry on a running server"
            )

    async def stop(self) -> None:
        self.begin_shutdown()
        self.stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        everything = [m for vs in self.versions.values() for m in vs.values()]
        self.versions = {}
        await asyncio.gather(
            *(m.close() for m in everything), *self._drains, return_exceptions=True
        )

    def shed_queued(self) -> None:
        """Answer every request still queued with 503 + Retry-After (the drain is running out);
        calls already running finish."""
        for versions in self.versions.values():
            for m in versions.values():
                if m.batcher is not None:
                    m.batcher.shed("the server is shutting down; retry (on another instance)")

    # Routing

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
            return [m for n in sorted(self.versions) for m in self._sorted(n)]
        self.get(name)  # 404 or 503 with the usual message
        return self._sorted(name)

    def statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """This process's `model_stats` entries (Triton's statistics extension)."""
        if name is None:
            chosen = self.all_versions()
        elif version is None:
            chosen = self.all_versions(name)
        else:
            chosen = [self.get(name, version)]
        return [m.stats.as_dict() for m in chosen]

    def _sorted(self, name: str) -> list[Served]:
        vs = self.versions.get(name, {})
        return [vs[v] for v in sorted(vs, key=int)]

    # Model control

    def check_control(self) -> None:
        if self.mode != "explicit":
            raise BadRequest(
                f"explicit model load and unload are not allowed in {self.mode!r} model "
                "control mode; start with --model-control-mode explicit"
            )

    async def load(
        self,
        name: str,
        config: model_config.ModelConfig | None = None,
        *,
        at_start: bool = False,
        versions: list[int] | None = None,
    ) -> None:
        """(Re)load model `name` as the repository and `config` say (None: config.pbtxt, read
        anew): new versions and changed files are loaded and warmed while the current ones
        serve, then the routing switches. `versions`: exactly these (a sibling worker's choice,
        service/scaling/cluster.py), whatever the policy would pick on today's disk. Raises
        ModelError (the serving set unchanged), NotFound, BadRequest, and Unavailable when the
        server shuts down before or while it loads."""
        repository.check_name(name)
        self._check_open(f"the load of {name!r}")
        async with self._locks[name]:
            self._check_open(f"the load of {name!r}")
            self.loading.add(name)
            try:
                await self._load(name, config, versions)
                if config is None:
                    self.overrides.pop(name, None)
                else:
                    self.overrides[name] = config
                self.failed.pop(name, None)
            except LoadCancelled:
                log.info("load of %s cancelled: the server is shutting down", name)
                raise Unavailable(
                    f"the server is shutting down: the load of {name!r} was cancelled; load it "
                    "on a running server"
                ) from None
            except (ModelError, NotFound) as exc:
                self.failed[name] = str(exc)
                if not at_start:
                    log.error("load of %s refused, serving set unchanged: %s", name, exc)
                raise
            finally:
                self.loading.discard(name)

    async def plan(self, name: str, config: model_config.ModelConfig | None = None) -> list[int]:
        """The versions a load of `name` with `config` would serve on today's disk."""
        files = await self.reads.run(name, repository.scan, self.repo, name)
        chosen, _, _ = self._choose(name, files, config, None)
        return chosen

    async def touches(self, name: str, config: model_config.ModelConfig | None = None) -> list[str]:
        """The models a load of `name` with `config` may change: itself, and an ensemble's
        step models (it loads those that are not loaded)."""
        if config is None:
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.reads.run(name, repository.scan, self.repo, name)
                config = model_config.from_text(
                    files.config_text, name, self.settings.strict_model_config
                )
        if config is None or not model_config.is_ensemble(config):
            return [name]
        return [name, *sorted({s.model_name for s in config.ensemble_scheduling.step})]

    def _choose(
        self,
        name: str,
        files: repository.ModelFiles,
        override: model_config.ModelConfig | None,
        versions: list[int] | None,
    ) -> tuple[list[int], model_config.ModelConfig | None, str]:
        """The versions to serve, the config to serve them with, and that config's identity."""
        if override is not None:
            config: model_config.ModelConfig | None = override
            config_id = hashlib.sha256(override.SerializeToString(deterministic=True)).hexdigest()
        else:
            config = model_config.from_text(
                files.config_text, name, self.settings.strict_model_config
            )
            config_id = str(files.fingerprint[0])
        policy = config if config is not None else model_config.ModelConfig()
        # An ensemble's version folders hold no model file (as in Triton).
        on_disk = sorted(files.folders if model_config.is_ensemble(config) else files.versions)
        if versions is not None:
            missing = sorted(set(versions) - set(on_disk))
            if missing:
                raise ModelError(f"model {name}: versions {missing} are no longer on disk")
            chosen = sorted(versions)
        else:
            chosen = model_config.select_versions(policy, on_disk)
        if not chosen:
            raise ModelError(
                f"model {name}: no version to serve (on disk: {on_disk or 'none'}; "
                f"version_policy {model_config.to_json(policy).get('version_policy', 'latest 1')})"
            )
        if config is not None:  # bounds, before anything is allocated
            effective = model_config.complete(config, name, self.settings)
            model_config.check_limits(effective, f"model {name}", self.settings, len(chosen))
            model_config.check_warmup(effective, f"model {name}", self.settings)
        elif len(chosen) > self.settings.limit_versions:
            raise ModelError(
                f"model {name}: versions to serve {len(chosen)} exceeds the limit "
                f"{self.settings.limit_versions} (LIMIT_VERSIONS)"
            )
        return chosen, config, config_id

    async def _load(
        self,
        name: str,
        override: model_config.ModelConfig | None,
        versions: list[int] | None,
    ) -> None:
        files = await self.reads.run(name, repository.scan, self.repo, name)
        chosen, config, config_id = self._choose(name, files, override, versions)
        if config is not None and model_config.is_ensemble(config):
            await self._load_ensemble(name, chosen, config, config_id)
            return
        warmup: dict[str, bytes] = {}
        if config is not None and config.model_warmup:
            warmup = await self.reads.run(
                f"{name}/{model_config.WARMUP_DIR}", repository.read_warmup, self.repo, name, config
            )
        current = self.versions.get(name, {})
        new: dict[str, Served] = {}
        opened: list[ModelVersion] = []
        try:
            for v in chosen:  # a failure here leaves the routing table as it was
                fp = (config_id, files.version_fingerprint(v))
                old = current.get(str(v))
                if old is not None and old.fingerprint == fp:
                    new[str(v)] = old
                    if old.cache is not None:  # a reload starts with an empty cache
                        old.cache.clear(old.cache_owner)
                    continue
                path = files.versions[v]
                label = repository.relative(path, self.repo)
                data = await self.reads.run(
                    label, repository.read_model, self.repo, path, self.settings.limit_model_bytes
                )
                m = await asyncio.to_thread(
                    open_version,
                    name,
                    v,
                    path,
                    config,
                    self.settings,
                    self.providers,
                    fp,
                    data,
                    label,
                    warmup,
                    self.stop_loads,
                )
                opened.append(m)
                new[str(v)] = m
        except BaseException:
            for m in opened:  # warmed but never served: let go of them now
                await m.close("the load failed")
            raise
        for m in opened:
            m.start(self.metrics, self.cache)
            if m.config.response_cache.enable and self.cache is None and m is opened[0]:
                log.info("%s: response_cache is enabled but CACHE_SIZE_BYTES is 0: no cache", name)
        self._switch(name, current, new)

    def _switch(self, name: str, current: dict[str, Served], new: dict[str, Served]) -> None:
        """Route `name` to `new` in one step; the versions of `current` left out drain."""
        self.versions = {**self.versions, name: new}  # the switch
        self._steps_changed(name)
        outgoing = [m for m in current.values() if m not in new.values()]
        for m in outgoing:
            self._drain_later(m)
        log.info(
            "%s %s: serving versions %s%s",
            "loaded" if not current else "reloaded",
            name,
            sorted(new, key=int),
            f" (draining {[m.version for m in outgoing]})" if outgoing else "",
        )

    async def _load_ensemble(
        self,
        name: str,
        chosen: list[int],
        config: model_config.ModelConfig,
        config_id: str,
    ) -> None:
        """Load the step models that are not loaded, then check the ensemble against the
        versions that serve its steps and switch to it (a refused ensemble unloads the steps it
        loaded: the serving set stays as it was). Every load checks anew (the steps may have
        changed), so an ensemble's versions are always new objects."""
        effective = model_config.complete(config, name, self.settings)
        steps, _ = ensemble.parse(effective, f"model {name}")
        loaded: list[str] = []  # step models this load brought in: unloaded again if it fails
        try:
            for step_model in dict.fromkeys(s.model for s in steps):
                if step_model not in self.versions:
                    await self._load_step(name, step_model)
                    loaded.append(step_model)
            new: dict[str, Served] = {
                str(v): open_ensemble(
                    name, v, effective, self.get, self.settings, (config_id, ("ensemble", v))
                )
                for v in chosen
            }
        except BaseException:
            for step_model in loaded:
                with contextlib.suppress(NotFound):
                    await self.unload(step_model)
            raise
        for m in new.values():
            m.start(self.metrics, self.cache)
        self._switch(name, self.versions.get(name, {}), new)

    async def _load_step(self, name: str, step_model: str) -> None:
        """Load a step model of ensemble `name` (not an ensemble: they do not nest, and
        refusing before loading keeps two ensembles from waiting on each other's loads)."""
        where = f"model {name}: step model {step_model!r}"
        try:
            files = await self.reads.run(step_model, repository.scan, self.repo, step_model)
            step_config = model_config.from_text(
                files.config_text, step_model, self.settings.strict_model_config
            )
        except (ModelError, NotFound, BadRequest) as exc:
            raise ModelError(f"{where} cannot be loaded: {exc}") from None
        if model_config.is_ensemble(step_config):
            raise ModelError(f"{where} is an ensemble; ensembles do not nest")
        try:
            await self.load(step_model, self.overrides.get(step_model))
        except (ModelError, NotFound, BadRequest) as exc:
            raise ModelError(f"{where} cannot be loaded: {exc}") from None
        log.info("loaded %s, a step of ensemble %s", step_model, name)

    def dependents(self, name: str) -> list[str]:
        """The served ensembles that have `name` as a step."""
        return sorted(
            n
            for n, vs in self.versions.items()
            for m in list(vs.values())[:1]
            if isinstance(m, EnsembleVersion) and any(s.model == name for s in m.steps)
        )

    def _steps_changed(self, name: str) -> None:
        """`name` now routes elsewhere (or nowhere): the ensembles that run it forget their
        cached answers."""
        for user in self.dependents(name):
            for m in self.versions.get(user, {}).values():
                if isinstance(m, EnsembleVersion):
                    m.steps_changed()

    async def unload(self, name: str) -> None:
        """Stop routing to `name` and drain every version of it (waits for the drain)."""
        repository.check_name(name)
        self._check_open(f"the unload of {name!r}")
        async with self._locks[name]:
            current = self.versions.get(name)
            if not current:
                raise NotFound(f"model {name!r} is not loaded")
            self.versions = {n: vs for n, vs in self.versions.items() if n != name}
            self._steps_changed(name)
            self.overrides.pop(name, None)
            self.requested.discard(name)
            await asyncio.gather(*(m.drain(self._grace()) for m in current.values()))
            log.info("unloaded %s (versions %s)", name, sorted(current, key=int))
            for user in self.dependents(name):
                log.warning("ensemble %s is unavailable until %s is loaded again", user, name)
        del current
        await give_back_memory()

    def _grace(self) -> float:
        # A request can wait for its queue timeout and then for one call.
        return self.settings.request_timeout_s + 30

    def _drain_later(self, m: Served) -> None:
        async def drain() -> None:
            await m.drain(self._grace())
            await give_back_memory()

        task = asyncio.get_running_loop().create_task(drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    # Repository index

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        try:
            on_disk = await self.reads.run("the repository", repository.model_names, self.repo)
        except (ModelError, RepositoryError) as exc:
            raise Unavailable(f"cannot list the model repository: {exc}") from None
        entries: list[IndexEntry] = []
        for name in sorted(set(on_disk) | set(self.versions)):
            served = self._sorted(name)
            if served:
                for m in served:
                    why = None
                    if isinstance(m, EnsembleVersion) and m.state is State.READY:
                        why = m.unavailable()  # a step model gone or changed
                    state = "UNAVAILABLE" if why else m.state.value
                    entries.append(IndexEntry(name, m.version, state, why or ""))
            elif not ready_only:
                if name in self.loading:
                    entries.append(IndexEntry(name, "", "LOADING"))
                else:
                    entries.append(
                        IndexEntry(name, "", "UNAVAILABLE", self.failed.get(name, "unloaded"))
                    )
        if ready_only:
            entries = [e for e in entries if e.state == "READY"]
        return [e.as_dict() for e in entries]

    # Poll mode

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # never let the poller die
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        on_disk = set(await self.reads.run("the repository", repository.model_names, self.repo))
        for name in sorted(on_disk):
            try:  # one model's trouble never stops the poll of the others
                files = await self.reads.run(name, repository.scan, self.repo, name)
            except (NotFound, BadRequest, ModelError) as exc:
                log.warning("poll: %s", exc)
                continue
            fp = files.fingerprint
            if not files.has_versions:  # every version folder removed
                if name in self.versions:
                    with contextlib.suppress(NotFound):
                        await self.unload(name)
                continue
            stable = self._seen.get(name) == fp
            self._seen[name] = fp
            if stable and self._applied.get(name) != fp:
                self._applied[name] = fp
                with contextlib.suppress(ModelError, NotFound):
                    await self.load(name, self.overrides.get(name))
        for name in sorted(set(self.versions) - on_disk):
            if name in self._missing:  # gone for two scans in a row
                self._missing.discard(name)
                self._seen.pop(name, None)
                self._applied.pop(name, None)
                with contextlib.suppress(NotFound):
                    await self.unload(name)
            else:
                self._missing.add(name)
        self._missing &= set(self.versions) - on_disk


async def give_back_memory() -> None:
    """After versions are closed (which lets go of their sessions at once: nothing else holds
    them), hand the freed heap back to the system, so an unload shows in the RSS. In a thread:
    malloc_trim walks the heap (ctypes releases the GIL), which would stall the event loop."""
    await asyncio.to_thread(release_memory)
