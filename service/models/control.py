"""Model control: what is served changes without a restart (Triton's modes and names).

- `none`: every model of the repository is loaded at start; the set never changes.
- `explicit`: only `--load-model` names (or `*`) at start; then `load` and `unload` requests.
- `poll`: like `none` at start, then the repository is rescanned (poller.py).

A load builds every new or changed version off the event loop (open, verify, warm up:
version.open_version) while the current versions keep serving; only when all of them are warm
does the routing table switch, in one step (registry.py). A broken new version fails the load
with one line and leaves the serving set as it was. Loads and unloads of one model are
serialised by a per-model lock (first come, first served), and each call carries what it asked
for: a config override applies to that load alone and is kept only if the load succeeds; a plain
load re-reads config.pbtxt.

Every repository read goes through `Reads` (threads of its own, a time limit), so a hanging file
system fails the load that touched it and nothing else; configs are refused when they ask for
more than the LIMIT_* settings before anything is allocated.

Ensembles (ensemble.py) are served beside the models they run: loading one loads its step models
first where they are not loaded (as Triton does), then checks its steps against the versions
served; at start they load after every other model. Unloading a step model is allowed (as in
Triton): the ensemble stays, is not ready, shows UNAVAILABLE in the index with the reason, and
answers 503 until the step is back.

Once the server is going away (`Lifecycle.stop`), loads stop between warm-up runs (their control
calls answer 503) and new control calls are refused, so no way out waits on a load. With
`--workers N` each worker has its own; service/scaling/cluster.py feeds every one of them the
same loads and unloads in the same order (a shared control log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from service.errors import (
    BadRequest,
    LoadCancelled,
    ModelError,
    NotFound,
    RepositoryError,
    Unavailable,
)
from service.lifecycle import Lifecycle
from service.models import config as model_config
from service.models import pipeline, repository, warmup
from service.models.config import ModelConfig
from service.models.ensemble import open_ensemble
from service.models.loading import choose
from service.models.poller import Poller
from service.models.reads import Reads
from service.models.registry import ModelRegistry
from service.models.rules import TaskRules
from service.models.runtime import usable_providers
from service.models.served import Served, State
from service.models.version import ModelVersion, open_version
from service.settings import Settings

log = logging.getLogger("coordconv.registry")


class ModelControl:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, rules: TaskRules, lifecycle: Lifecycle
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.rules = rules
        self.lifecycle = lifecycle
        self.repo = Path(settings.model_dir)
        self.mode = settings.model_control_mode
        self.failed: dict[str, str] = {}  # name -> why its last load failed
        # name -> the config override its last successful load was given (kept for reloads
        # of unchanged files, e.g. in poll mode; a plain load drops it).
        self.overrides: dict[str, ModelConfig] = {}
        self.providers: list[str] = []
        self.provider_problem: str | None = None
        self.reads = Reads(settings.repository_timeout_s)
        self.poller = Poller(self)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

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
        self.registry.requested = set(wanted)
        for name in await self._ensembles_last(wanted):
            try:
                await self.load(name, at_start=True)
            except (ModelError, NotFound, BadRequest) as exc:
                raise RepositoryError(str(exc)) from None
        if self.mode == "poll":
            await self.poller.start(on_disk)
        self.registry.started = True
        versions = self.registry.versions
        loaded = [f"{n}:{v}" for n, vs in sorted(versions.items()) for v in vs]
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
                files = await self.scan(name)
                if repository.is_ensemble_text(files.config_text):
                    into = ensembles
            into.append(name)
        return plain + ensembles

    async def _probe(self, names: Iterable[str]) -> bytes | None:
        """One ONNX file's bytes, to find out which execution providers load here."""
        limit = self.settings.limit_model_bytes
        for name in names:
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.scan(name)
                if files.versions:
                    path = files.versions[max(files.versions)]
                    return await self.reads.run(name, repository.read_model, self.repo, path, limit)
        return None

    async def scan(self, name: str) -> repository.ModelFiles:
        return await self.reads.run(name, repository.scan, self.repo, name)

    async def stop(self) -> None:
        self.lifecycle.stop()
        await self.poller.stop()
        await self.registry.stop()

    def check_control(self) -> None:
        if self.mode != "explicit":
            raise BadRequest(
                f"explicit model load and unload are not allowed in {self.mode!r} model "
                "control mode; start with --model-control-mode explicit"
            )

    def _check_open(self, what: str) -> None:
        if self.lifecycle.closing:
            raise Unavailable(
                f"the server is shutting down: {what} refused; retry on a running server"
            )

    # Load and unload

    async def load(
        self,
        name: str,
        config: ModelConfig | None = None,
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
            self.registry.loading.add(name)
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
                self.registry.loading.discard(name)

    async def unload(self, name: str) -> None:
        """Stop routing to `name` and drain every version of it (waits for the drain)."""
        repository.check_name(name)
        self._check_open(f"the unload of {name!r}")
        async with self._locks[name]:
            if name in self.registry.versions:
                self.overrides.pop(name, None)
            await self.registry.remove(name)  # NotFound where it is not loaded

    async def plan(self, name: str, config: ModelConfig | None = None) -> list[int]:
        """The versions a load of `name` with `config` would serve on today's disk."""
        chosen, _, _ = choose(self.settings, name, await self.scan(name), config, None)
        return chosen

    async def touches(self, name: str, config: ModelConfig | None = None) -> list[str]:
        """The models a load of `name` with `config` may change: itself, and an ensemble's
        step models (it loads those that are not loaded)."""
        if config is None:
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.scan(name)
                config = model_config.from_text(
                    files.config_text, name, self.settings.strict_model_config
                )
        if config is None or not model_config.is_ensemble(config):
            return [name]
        return [name, *sorted({s.model_name for s in config.ensemble_scheduling.step})]

    async def _load(
        self, name: str, override: ModelConfig | None, versions: list[int] | None
    ) -> None:
        files = await self.scan(name)
        chosen, config, config_id = choose(self.settings, name, files, override, versions)
        if config is not None and model_config.is_ensemble(config):
            await self._load_ensemble(name, chosen, config, config_id)
            return
        files_of_warmup: dict[str, bytes] = {}
        if config is not None and config.model_warmup:
            files_of_warmup = await self.reads.run(
                f"{name}/{warmup.WARMUP_DIR}", warmup.read_files, self.repo, name, config
            )
        current = self.registry.versions.get(name, {})
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
                    files_of_warmup,
                    self.lifecycle.stop_loads,
                    self.rules,
                )
                opened.append(m)
                new[str(v)] = m
        except BaseException:
            for m in opened:  # warmed but never served: let go of them now
                await m.close("the load failed")
            raise
        cache = self.registry.cache
        for m in opened:
            m.start(self.registry.metrics, cache)
            if m.config.response_cache.enable and cache is None and m is opened[0]:
                log.info("%s: response_cache is enabled but CACHE_SIZE_BYTES is 0: no cache", name)
        self.registry.switch(name, new)

    async def _load_ensemble(
        self, name: str, chosen: list[int], config: ModelConfig, config_id: str
    ) -> None:
        """Load the step models that are not loaded, then check the ensemble against the
        versions that serve its steps and switch to it (a refused ensemble unloads the steps it
        loaded: the serving set stays as it was). Every load checks anew (the steps may have
        changed), so an ensemble's versions are always new objects."""
        effective = model_config.complete(config, name, self.settings)
        steps, _ = pipeline.parse(effective, f"model {name}")
        loaded: list[str] = []  # step models this load brought in: unloaded again if it fails
        registry = self.registry
        try:
            for step_model in dict.fromkeys(s.model for s in steps):
                if step_model not in registry.versions:
                    await self._load_step(name, step_model)
                    loaded.append(step_model)
            new: dict[str, Served] = {
                str(v): open_ensemble(
                    name, v, effective, registry.get, self.settings, (config_id, ("ensemble", v))
                )
                for v in chosen
            }
        except BaseException:
            for step_model in loaded:
                with contextlib.suppress(NotFound):
                    await self.unload(step_model)
            raise
        for m in new.values():
            m.start(registry.metrics, registry.cache)
        registry.switch(name, new)

    async def _load_step(self, name: str, step_model: str) -> None:
        """Load a step model of ensemble `name` (not an ensemble: they do not nest, and
        refusing before loading keeps two ensembles from waiting on each other's loads)."""
        where = f"model {name}: step model {step_model!r}"
        try:
            files = await self.scan(step_model)
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

    # Repository index

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        try:
            on_disk = await self.reads.run("the repository", repository.model_names, self.repo)
        except (ModelError, RepositoryError) as exc:
            raise Unavailable(f"cannot list the model repository: {exc}") from None
        entries: list[dict[str, str]] = []
        registry = self.registry
        for name in sorted(set(on_disk) | set(registry.versions)):
            served = registry.sorted(name)
            for m in served:
                why = m.unavailable() if m.state is State.READY else None  # a step gone
                state = "UNAVAILABLE" if why else m.state.value
                entries.append(_entry(name, m.version, state, why or ""))
            if served or ready_only:
                continue
            if name in registry.loading:
                entries.append(_entry(name, "", "LOADING"))
            else:
                entries.append(_entry(name, "", "UNAVAILABLE", self.failed.get(name, "unloaded")))
        if ready_only:
            entries = [e for e in entries if e["state"] == "READY"]
        return entries


def _entry(name: str, version: str, state: str, reason: str = "") -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}
