"""The product API, version 1: /v1/render, /v1/locate, /v1/models."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import codecs
from service.errors import BadRequest, UnsupportedMediaType
from service.routes.common import (
    JSON,
    NPY,
    disconnect_waiter,
    json_response,
    model_headers,
    parse_json,
    wants_npy,
)
from service.schemas import (
    Error,
    LocateRequest,
    LocateResponse,
    ModelList,
    RenderRequest,
    RenderResponse,
    error_responses,
    json_body,
)
from service.state import AuthDep, ServiceDep, ServiceState

ERRORS = error_responses(
    Error,
    {
        400: "bad input (the message says what)",
        401: "missing or wrong API key",
        404: "unknown model",
        406: "unsupported Accept",
        415: "unsupported Content-Type",
    },
)
router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[AuthDep], responses=ERRORS)
# Encoding or decoding more than this many PNGs moves to a worker thread (zlib releases the GIL),
# so a big request does not stall the event loop.
THREAD_THRESHOLD = 16


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return body


def _string(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _check_count(state: ServiceState, n: int, what: str) -> None:
    if n == 0:
        raise BadRequest(f"{what} is empty: send at least one item")
    limit = state.settings.max_items_per_request
    if n > limit:
        raise BadRequest(
            f"{what} has {n} items; at most {limit} per request (MAX_ITEMS_PER_REQUEST)"
        )


async def _maybe_thread(n: int, func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args) if n > THREAD_THRESHOLD else func(*args)


@router.post(
    "/render",
    summary="Render coordinates as images",
    description="Each (x, y) becomes a 64x64 image: a 9x9 square (`render`) or a softmax "
    "heatmap (`pixel`, PNG scaled so its brightest pixel is 255). With `Accept: "
    "application/x-npy` the body is an NPY float32 array (N, 64, 64) and `format` is ignored.",
    response_model=RenderResponse,
    responses={200: {"content": {NPY: {}}}},
    openapi_extra=json_body(RenderRequest),
)
async def render(request: Request, state: ServiceDep) -> Response:
    npy = wants_npy(request)
    _require_json(request)
    body = _object(parse_json(await request.body()), {"coords", "model", "format"})
    if "coords" not in body:
        raise BadRequest("missing field 'coords': a list of [x, y] pairs")
    name = _string(body, "model", "render")
    fmt = _string(body, "format", "png")
    if fmt not in ("png", "array"):
        raise BadRequest(f"format must be 'png' or 'array', got {fmt!r}")
    coords = body["coords"]
    _check_count(state, len(coords) if isinstance(coords, list) else 1, "coords")
    x = codecs.check_coords(coords)
    model, batcher = state.model(name, ("render", "pixel"))
    out = await batcher.infer(x, disconnect_waiter(request))
    headers = model_headers(model)
    if npy:
        return Response(codecs.encode_npy(out), media_type=NPY, headers=headers)
    scale = model.task == "pixel"

    def encode() -> Response:  # PNG or float-list encoding of many images: off the event loop
        images = out if fmt == "array" else [codecs.encode_png_b64(im, scale) for im in out]
        return json_response(
            {"model": model.name, "version": model.version, "images": images}, headers=headers
        )

    response: Response = await _maybe_thread(len(out), encode)
    return response


def _require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if ctype != JSON:
        raise UnsupportedMediaType(f"Content-Type must be {JSON}, got {ctype!r}")


def _decode_json_images(items: list[Any]) -> np.ndarray:
    out = np.empty((len(items), codecs.CANVAS, codecs.CANVAS), dtype=np.float32)
    for i, item in enumerate(items):
        if isinstance(item, str):
            out[i] = codecs.decode_png_b64(item, f"images[{i}]")
        elif isinstance(item, list):
            out[i] = codecs.array_images([item], f"images[{i}]")[0]
        else:
            raise BadRequest(f"images[{i}] must be a base64 PNG string or a 64x64 nested list")
    return out


def _decode_pngs(files: list[tuple[str, bytes]]) -> np.ndarray:
    out = np.empty((len(files), codecs.CANVAS, codecs.CANVAS), dtype=np.float32)
    for i, (filename, data) in enumerate(files):
        out[i] = codecs.decode_png(data, f"images[{i}] ({filename})")
    return out


@router.post(
    "/locate",
    summary="Locate the square or pixel in images",
    description="Images in one of three encodings: JSON (`images`: base64 PNGs or 64x64 float "
    "lists), `multipart/form-data` with PNG files in field `images`, or an NPY body "
    "(`Content-Type: application/x-npy`, shape (N, 64, 64), float32 or float64). For multipart "
    "and NPY the model is the `model` query parameter. Values must be finite and in [0, 1].",
    response_model=LocateResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": LocateRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                        "required": ["images"],
                    }
                },
                NPY: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def locate(
    request: Request,
    state: ServiceDep,
    model: str | None = Query(None, description="model name (default `locate`)"),
) -> Response:
    npy_out = wants_npy(request)
    ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    name = model or "locate"
    limit = state.settings.max_items_per_request
    if ctype == JSON:
        body = _object(parse_json(await request.body()), {"images", "model"})
        if "images" not in body:
            raise BadRequest("missing field 'images': base64 PNGs or 64x64 nested lists")
        items = body["images"]
        if not isinstance(items, list):
            raise BadRequest("images must be a list")
        name = _string(body, "model", name)
        _check_count(state, len(items), "images")
        images = await _maybe_thread(len(items), _decode_json_images, items)
    elif ctype == "multipart/form-data":
        async with request.form(max_files=limit + 1, max_fields=limit + 1) as form:
            uploads = form.getlist("images")
            files: list[tuple[str, bytes]] = []
            for i, up in enumerate(uploads):
                if isinstance(up, str):
                    raise BadRequest(f"images[{i}] must be a file upload, not a text field")
                files.append((up.filename or f"#{i}", await up.read()))
        _check_count(state, len(files), "images")
        images = await _maybe_thread(len(files), _decode_pngs, files)
    elif ctype == NPY:
        images = codecs.decode_npy(await request.body())
        _check_count(state, len(images), "images")
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r} is not supported: use {JSON}, multipart/form-data or {NPY}"
        )
    codecs.check_images(images)
    m, batcher = state.model(name, "locate")
    out = await batcher.infer(images, disconnect_waiter(request))
    headers = model_headers(m)
    if npy_out:
        return Response(codecs.encode_npy(out), media_type=NPY, headers=headers)
    return json_response({"model": m.name, "version": m.version, "coords": out}, headers=headers)


@router.get("/models", summary="Loaded models", response_model=ModelList)
async def models(state: ServiceDep) -> Response:
    registry = state.registry
    listed = [m.describe() for m in registry.models.values()] if registry else []
    return json_response({"models": listed})
