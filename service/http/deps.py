"""What the HTTP routes depend on: the data plane (`PlaneDep`) and the API key checks, one per
scope (`AuthDep`: inference, `AdminDep`: repository control), the transport-neutral rule of
service/dataplane/auth.py. A router's `AuthDep` and a route's `AdminDep` add up: an inference key
passes the first and is refused (403) by the second. The fast dispatch
(service/http/dispatch.py) reads these same declarations off each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.dataplane.auth import KeyRing, Scope
from service.dataplane.plane import DataPlane


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a worker thread, a thread
# hop per dependency per request.
async def get_plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[DataPlane, Depends(get_plane)]


def keyring(plane: DataPlane) -> KeyRing:
    settings = plane.settings
    return KeyRing.of(settings.api_key, settings.admin_api_key)


async def require_api_key(request: Request, plane: PlaneDep) -> None:
    """The inference scope: API_KEY (or ADMIN_API_KEY) where API_KEY is set."""
    keyring(plane).check(Scope.INFERENCE, request.headers.get("authorization", ""))


async def require_admin_key(request: Request, plane: PlaneDep) -> None:
    """The admin scope: ADMIN_API_KEY (unset: the API_KEY keys) where either is set."""
    keyring(plane).check(Scope.ADMIN, request.headers.get("authorization", ""))


AuthDep = Depends(require_api_key)
AdminDep = Depends(require_admin_key)

# What each key dependency checks (the fast dispatch runs them by this table).
SCOPES = {require_api_key: Scope.INFERENCE, require_admin_key: Scope.ADMIN}
