"""What the HTTP routes share, reached through the `ServiceDep` dependency: settings, metrics,
the registry and the data plane that every route adapts."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.dataplane.offload import BodyParser
from service.dataplane.plane import DataPlane
from service.errors import Unauthorized, Unavailable
from service.metrics import Metrics
from service.models.registry import ModelRegistry
from service.settings import Settings

if TYPE_CHECKING:
    from service.grpc.server import GrpcFrontEnd


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    dataplane: DataPlane
    parser: BodyParser
    accepting: bool = True  # False once SIGTERM arrived: /readyz says 503 while we drain
    grpc: GrpcFrontEnd | None = None
    _grpc_stop: asyncio.Task[None] | None = None
    _shed: asyncio.TimerHandle | None = None

    def begin_drain(self) -> None:
        """On SIGTERM (on the event loop): not ready any more; gRPC starts draining now, together
        with HTTP, within GRACE_S; shortly before GRACE_S runs out, whatever is still queued is
        answered 503 + Retry-After (another instance can take it) instead of being cut off."""
        self.accepting = False
        if self._shed is not None:  # already draining
            return
        loop = asyncio.get_running_loop()
        if self.grpc is not None and self._grpc_stop is None:
            self._grpc_stop = loop.create_task(self.grpc.stop(self.settings.grace_s))
        shed_at = max(self.settings.grace_s - 1.0, self.settings.grace_s * 0.8)
        self._shed = loop.call_later(shed_at, self.registry.shed_queued)

    async def stop_grpc(self) -> None:
        if self.grpc is not None:
            self.begin_drain()
            if self._grpc_stop is None:  # accepting was already off
                self._grpc_stop = asyncio.get_running_loop().create_task(self.grpc.stop(0))
            await self._grpc_stop

    @property
    def ready(self) -> bool:
        return self.accepting and self.dataplane.ready()

    def plane(self) -> DataPlane:
        """The data plane, once the start-up models are loaded (503 before)."""
        if not self.registry.started:
            raise Unavailable("models are not loaded yet", retry_after=1)
        return self.dataplane


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a worker thread, a thread
# hop per dependency per request.
async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


ServiceDep = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request, state: ServiceDep) -> None:
    """Bearer authentication when API_KEY is set; constant-time comparison."""
    check_api_key(state.settings.api_key, request.headers.get("authorization", ""))


def check_api_key(key: str | None, header: str) -> None:
    """The rule for every front end: `Authorization: Bearer <API_KEY>` when a key is set."""
    if key is None:
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <API_KEY>'")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("invalid API key")


AuthDep = Depends(require_api_key)
