"""What the routes share: settings, models, batchers, metrics, readiness. Reached through the
`ServiceDep` dependency."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.batching import Batcher
from service.errors import BadRequest, NotFound, Unauthorized, Unavailable
from service.metrics import Metrics
from service.registry import Model, Registry
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    registry: Registry | None = None
    batchers: dict[str, Batcher] = field(default_factory=dict)
    ready: bool = False

    def model(self, name: str, task: str | tuple[str, ...] | None = None) -> tuple[Model, Batcher]:
        """The model and its batcher; 404 if unknown, 400 if it does the wrong task."""
        if not self.ready or self.registry is None:
            raise Unavailable("models are not loaded yet", retry_after=1)
        model = self.registry.get(name)
        if model is None:
            known = ", ".join(sorted(self.registry.models)) or "none"
            raise NotFound(f"unknown model {name!r}; loaded models: {known}")
        tasks = (task,) if isinstance(task, str) else task
        if tasks and model.task not in tasks:
            raise BadRequest(
                f"model {name!r} does {model.task!r}; this route needs a model for "
                f"{' or '.join(repr(t) for t in tasks)}"
            )
        return model, self.batchers[name]


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a worker thread, a thread
# hop per dependency per request.
async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


ServiceDep = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request, state: ServiceDep) -> None:
    """Bearer authentication when API_KEY is set; constant-time comparison."""
    key = state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <API_KEY>'")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("invalid API key")


AuthDep = Depends(require_api_key)
