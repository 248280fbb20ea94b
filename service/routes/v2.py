"""Open Inference Protocol (KServe V2) routes; filled in by the batching issue."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v2", tags=["v2"])
