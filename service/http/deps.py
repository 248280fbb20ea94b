"""What the HTTP routes depend on: the data plane (`PlaneDep`) and the API key check (`AuthDep`,
the transport-neutral rule of service/dataplane/auth.py). The fast dispatch
(service/http/dispatch.py) reads these same declarations off each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.dataplane.auth import check_bearer
from service.dataplane.plane import DataPlane


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a worker thread, a thread
# hop per dependency per request.
async def get_plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[DataPlane, Depends(get_plane)]


async def require_api_key(request: Request, plane: PlaneDep) -> None:
    check_bearer(plane.settings.api_key, request.headers.get("authorization", ""))


AuthDep = Depends(require_api_key)
