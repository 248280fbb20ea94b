"""Probes and metrics, never authenticated."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.deps import ServiceDep
from service.http.responses import json_response

router = APIRouter(tags=["health"])


STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/", summary="The demo page", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="Liveness: the process is up")
async def healthz(state: ServiceDep) -> Response:
    cluster = state.dataplane.cluster
    if cluster is None:
        return json_response({"status": "alive"})
    return json_response({"status": "alive", "worker": cluster.info.index, "pid": os.getpid()})


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Readiness: every start-up model loaded and warmed",
    responses={503: {"description": "not ready (starting or draining)"}},
)
async def readyz(state: ServiceDep) -> Response:
    if not state.ready:
        return json_response({"status": "not ready"}, 503, headers={"Retry-After": "1"})
    models: dict[str, dict[str, str]] = {}
    for m in state.registry.all_versions():
        models.setdefault(m.name, {})[m.version] = m.provider
    return json_response({"status": "ready", "models": models})


@router.head("/metrics", include_in_schema=False)
@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: ServiceDep) -> Response:
    # With --workers N this reads every worker's metric files: off the event loop.
    return Response(
        await asyncio.to_thread(state.metrics.exposition), media_type=CONTENT_TYPE_LATEST
    )
