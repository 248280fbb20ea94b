"""Poll mode: the repository is rescanned every REPOSITORY_POLL_SECS. A version directory that
appeared (and stayed the same for one interval, so a copy in progress is not taken) is loaded, a
removed one is drained and unloaded, a changed file is reloaded; a model folder gone for two scans
in a row is unloaded. One model's trouble never stops the poll of the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

from service.errors import BadRequest, ModelError, NotFound
from service.models import repository
from service.models.config import ModelConfig
from service.models.reads import Reads
from service.models.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger("coordconv.registry")


class Control(Protocol):
    """What the poller drives (control.py's ModelControl, which owns it)."""

    settings: Settings
    registry: ModelRegistry
    reads: Reads
    repo: Path
    overrides: dict[str, ModelConfig]

    async def scan(self, name: str) -> repository.ModelFiles: ...

    async def load(self, name: str, config: ModelConfig | None = None) -> None: ...

    async def unload(self, name: str) -> None: ...


class Poller:
    def __init__(self, control: Control) -> None:
        self.control = control
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[object, ...]] = {}  # fingerprint at the last scan
        self._applied: dict[str, tuple[object, ...]] = {}  # fingerprint last acted on
        self._missing: set[str] = set()  # gone at the last scan

    async def start(self, on_disk: list[str]) -> None:
        """What the start-up loads saw counts as applied; then poll."""
        for name in on_disk:
            with contextlib.suppress(ModelError, NotFound, BadRequest):
                files = await self.control.scan(name)
                self._seen[name] = self._applied[name] = files.fingerprint
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.control.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # never let the poller die
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        control = self.control
        listed = await control.reads.run("the repository", repository.model_names, control.repo)
        on_disk = set(listed)
        for name in sorted(on_disk):
            try:  # one model's trouble never stops the poll of the others
                files = await control.scan(name)
            except (NotFound, BadRequest, ModelError) as exc:
                log.warning("poll: %s", exc)
                continue
            fp = files.fingerprint
            if not files.has_versions:  # every version folder removed
                if name in control.registry.versions:
                    with contextlib.suppress(NotFound):
                        await control.unload(name)
                continue
            stable = self._seen.get(name) == fp
            self._seen[name] = fp
            if stable and self._applied.get(name) != fp:
                self._applied[name] = fp
                with contextlib.suppress(ModelError, NotFound):
                    await control.load(name, control.overrides.get(name))
        served = control.registry.versions
        for name in sorted(set(served) - on_disk):
            if name in self._missing:  # gone for two scans in a row
                self._missing.discard(name)
                self._seen.pop(name, None)
                self._applied.pop(name, None)
                with contextlib.suppress(NotFound):
                    await control.unload(name)
            else:
                self._missing.add(name)
        self._missing &= set(control.registry.versions) - on_disk
