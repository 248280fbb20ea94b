"""What the HTTP routes share, reached through the `ServiceDep` dependency: settings, metrics,
the registry and the data plane that every route adapts."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.dataplane import DataPlane
from service.errors import Unauthorized, Unavailable
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    dataplane: DataPlane
    accepting: bool = True  # False once SIGTERM arrived: /readyz says 503 while we drain

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
