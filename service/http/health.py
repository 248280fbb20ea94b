"""Probes, metrics and the demo page, never authenticated and never refused for capacity."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.deps import PlaneDep
from service.http.responses import json_response

router = APIRouter(tags=["health"])


STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/", summary="The demo page", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="Liveness: the process is up")
async def healthz(plane: PlaneDep) -> Response:
    if plane.siblings is None:
        return json_response({"status": "alive"})
    return json_response({"status": "alive", "worker": plane.siblings.index, "pid": os.getpid()})


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Readiness: every start-up model loaded and warmed",
    responses={503: {"description": "not ready (starting or draining)"}},
)
async def readyz(plane: PlaneDep) -> Response:
    if not plane.ready():
        return json_response({"status": "not ready"}, 503, headers={"Retry-After": "1"})
    return json_response({"status": "ready", "models": plane.providers()})


@router.head("/metrics", include_in_schema=False)
@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(plane: PlaneDep) -> Response:
    # With --workers N this reads every worker's metric files: off the event loop.
    return Response(
        await asyncio.to_thread(plane.metrics.exposition), media_type=CONTENT_TYPE_LATEST
    )
