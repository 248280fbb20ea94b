"""The product API, version 1, as an adapter over the data plane: /v1/render, /v1/locate,
/v1/models. Each route decodes its body (the pydantic schema that documents it checks it),
calls `DataPlane.infer` and encodes the answer as JSON, PNGs or NPY."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from coordconv.contract import COORDS, IMAGE
from service.dataplane import codecs, tasks
from service.dataplane.offload import Cost
from service.dataplane.types import InferRequest, InputTensor
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.http.deps import AuthDep, PlaneDep
from service.http.responses import (
    JSON,
    NPY,
    answered,
    json_response,
    unless_disconnected,
    wants_npy,
)
from service.http.schemas import (
    Error,
    LocateRequest,
    LocateResponse,
    ModelList,
    RenderRequest,
    RenderResponse,
    check_count,
    error_responses,
    json_body,
    parse_body,
)

ERRORS = error_responses(
    Error,
    {
        400: "bad input (the message says what)",
        401: "missing or wrong API key",
        404: "unknown model or version",
        406: "unsupported Accept",
        415: "unsupported Content-Type",
    },
)
router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[AuthDep], responses=ERRORS)
# Encoding more than this many images moves to a worker thread (zlib releases the GIL), so a big
# answer does not stall the event loop.
ENCODE_INLINE_ITEMS = 16
RENDER_TASKS = ("render", "pixel")
CONFIDENCE = "confidence"
RENDER_BYTES_PER_ITEM = 256


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower()


def _tensor(name: str, array: Any, label: str) -> InputTensor:
    return InputTensor(name, "FP32", list(array.shape), array=array, label=label)


@router.post(
    "/render",
    summary="Render coordinates as images",
    description="Each (x, y) becomes a 64x64 image: a 9x9 square (`render`) or a softmax "
    "heatmap (`pixel`, PNG scaled so its brightest pixel is 255). With `Accept: "
    "application/x-npy` the body is an NPY float32 array (N, 64, 64) and `format` is ignored. "
    "`version` picks a model version; without it the highest ready version answers.",
    response_model=RenderResponse,
    responses={200: {"content": {NPY: {}}}},
    openapi_extra=json_body(RenderRequest),
)
async def render(request: Request, plane: PlaneDep) -> Response:
    npy = wants_npy(request)
    if (ctype := _content_type(request)) != JSON:
        raise UnsupportedMediaType(f"Content-Type must be {JSON}, got {ctype!r}")
    limit = plane.settings.max_items_per_request
    # A coordinate pair takes a few dozen bytes of JSON: a body far larger than the item limit
    # allows is refused before it is read, let alone parsed.
    most = limit * RENDER_BYTES_PER_ITEM + 4096
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > most:
        raise PayloadTooLarge(
            f"a /v1/render body of {int(length)} bytes cannot hold at most {limit} coordinate "
            f"pairs (MAX_ITEMS_PER_REQUEST); the limit is {most} bytes"
        )
    raw = await request.body()
    if len(raw) > most:
        raise PayloadTooLarge(f"a /v1/render body over {most} bytes cannot hold {limit} pairs")
    body = await plane.offload.run(Cost.PARSE, len(raw), parse_body, RenderRequest, raw, limit)
    req = InferRequest(
        model=body.model,
        version=body.version,
        inputs=[_tensor(COORDS.name, body.coords, "coords")],
        tasks=RENDER_TASKS,
        max_items=limit,
    )
    answer = await unless_disconnected(request, plane.infer(req))
    out = answer.outputs[0].data
    headers = answered(request, answer)
    if npy:
        return Response(codecs.encode_npy(out), media_type=NPY, headers=headers)
    scale = answer.task == "pixel"
    fmt = body.format

    def encode() -> Response:  # PNG or float-list encoding of many images: off the event loop
        images = out if fmt == "array" else [codecs.encode_png_b64(im, scale) for im in out]
        return json_response(
            {"model": answer.model_name, "version": answer.model_version, "images": images},
            headers=headers,
        )

    if len(out) > ENCODE_INLINE_ITEMS:
        return await asyncio.to_thread(encode)
    return encode()


LOCATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": LocateRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["images"],
                }
            },
            NPY: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/locate",
    summary="Locate the square or pixel in images",
    description="Images in one of three encodings: JSON (`images`: base64 PNGs or 64x64 float "
    "lists), `multipart/form-data` with PNG files in field `images`, or an NPY body "
    "(`Content-Type: application/x-npy`, shape (N, 64, 64), float32 or float64). For multipart "
    "and NPY the model and version are query parameters. Values must be finite and in [0, 1]. "
    "Models that answer a confidence (locate version 2) add `confidence` (0..1) and `ok` (the "
    "image shows exactly one 9x9 square or one lit pixel) per image; an NPY answer holds the "
    "coordinates only.",
    response_model=LocateResponse,
    openapi_extra=LOCATE_BODY,
)
async def locate(
    request: Request,
    plane: PlaneDep,
    model: str | None = Query(None, description="model name (default `locate`)"),
    version: str | None = Query(None, description="model version (default: the highest)"),
) -> Response:
    npy_out = wants_npy(request)
    ctype = _content_type(request)
    limit = plane.settings.max_items_per_request
    name = model or "locate"
    if ctype == JSON:
        raw = await request.body()
        body = await plane.offload.run(Cost.PARSE, len(raw), parse_body, LocateRequest, raw, limit)
        images, name = body.images, body.model if model is None else model
        version = body.version if version is None else version
    elif ctype == "multipart/form-data":
        codecs.check_multipart_complete(await request.body(), request.headers["content-type"])
        async with request.form(max_files=limit + 1, max_fields=limit + 1) as form:
            uploads = form.getlist("images")
            files: list[tuple[str, bytes]] = []
            for i, up in enumerate(uploads):
                if isinstance(up, str):
                    raise BadRequest(f"images[{i}] must be a file upload, not a text field")
                files.append((up.filename or f"#{i}", await up.read()))
        check_count(len(files), "images", limit)
        size = sum(len(d) for _, d in files)
        images = await plane.offload.run(Cost.DECODE, size, codecs.decode_pngs, files)
    elif ctype == NPY:
        raw = await request.body()
        claimed = codecs.npy_items(raw)
        if claimed is not None and claimed > limit:  # before reading the array
            check_count(claimed, "images", limit)
        images = await plane.offload.run(Cost.DECODE, len(raw), codecs.decode_npy, raw)
        check_count(len(images), "images", limit)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r} is not supported: use {JSON}, multipart/form-data or {NPY}"
        )
    req = InferRequest(
        model=name,
        version=version,
        inputs=[_tensor(IMAGE.name, images, "images")],
        tasks=("locate",),
        max_items=limit,
    )
    answer = await unless_disconnected(request, plane.infer(req))
    headers = answered(request, answer)
    coords = answer.output(COORDS.name)
    if npy_out:
        return Response(codecs.encode_npy(coords), media_type=NPY, headers=headers)
    result: dict[str, Any] = {
        "model": answer.model_name,
        "version": answer.model_version,
        "coords": coords,
    }
    if any(t.name == CONFIDENCE for t in answer.outputs):  # models that say how sure they are
        confidence = answer.output(CONFIDENCE)
        result["confidence"] = confidence
        result["ok"] = (confidence >= tasks.ok_threshold(answer.config)).tolist()
    return json_response(result, headers=headers)


@router.get("/models", summary="Loaded model versions", response_model=ModelList)
async def models(plane: PlaneDep) -> Response:
    return json_response({"models": plane.models()})
