"""The Open Inference Protocol (KServe V2) over HTTP as NVIDIA Triton speaks it, with its model
repository and statistics extensions, as an adapter over the data plane: decode the JSON (and
binary tensor data), call `DataPlane`, encode. Errors are `{"error": message}`.

The infer route reads the raw body (clients may send no Content-Type). With the binary tensor
data extension the body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the tensors' raw little-endian bytes, in input order; outputs are binary when the request says
so (`binary_data_output`, or per output `binary_data`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from service.dataplane.offload import Cost
from service.dataplane.plane import DataPlane
from service.dataplane.types import InferRequest, InferResponse, InputTensor
from service.errors import BadRequest
from service.http.deps import AdminDep, AuthDep, PlaneDep
from service.http.responses import (
    answered,
    json_response,
    parse_json,
    unless_disconnected,
)
from service.http.schemas import V2Error, error_responses

TAGS: list[str | Enum] = ["v2 (Open Inference Protocol)"]
ERRORS = error_responses(
    V2Error,
    {
        400: "bad request (the message says what)",
        401: "missing or wrong API key",
        404: "unknown model or version",
    },
)
health = APIRouter(prefix="/v2/health", tags=TAGS)
guarded = APIRouter(prefix="/v2", tags=TAGS, dependencies=[AuthDep], responses=ERRORS)

HEADER_LENGTH = "Inference-Header-Content-Length"
ModelName = Path(description="model name, e.g. render")
Version = Path(description="model version, e.g. 1")


@health.head("/live", include_in_schema=False)
@health.get("/live", summary="Server liveness")
async def live() -> Response:
    return json_response({"live": True})


@health.head("/ready", include_in_schema=False)
@health.get("/ready", summary="Server readiness")
async def ready(plane: PlaneDep) -> Response:
    if not plane.ready():
        return json_response({"error": "models are not loaded"}, 503, {"Retry-After": "1"})
    return json_response({"ready": True})


@guarded.get("", summary="Server metadata")
async def server_metadata(plane: PlaneDep) -> Response:
    return json_response(plane.server_metadata())


# Statistics extension (declared before /models/{name}, which would swallow "stats")


@guarded.get("/models/stats", summary="Statistics of every model version")
async def all_stats(plane: PlaneDep) -> Response:
    return json_response(await plane.model_statistics())


@guarded.get("/models/{name}/stats", summary="Statistics of a model's versions")
async def model_stats(plane: PlaneDep, name: str = ModelName) -> Response:
    return json_response(await plane.model_statistics(name))


@guarded.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version")
async def version_stats(plane: PlaneDep, name: str = ModelName, version: str = Version) -> Response:
    return json_response(await plane.model_statistics(name, version))


# Metadata, readiness, configuration


@guarded.get("/models/{name}", summary="Model metadata (every served version)")
async def model_metadata(plane: PlaneDep, name: str = ModelName) -> Response:
    return json_response(plane.model_metadata(name))


@guarded.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def version_metadata(
    plane: PlaneDep, name: str = ModelName, version: str = Version
) -> Response:
    return json_response(plane.model_metadata(name, version))


async def _ready(plane: DataPlane, name: str, version: str | None) -> Response:
    if plane.model_ready(name, version):
        return json_response({"name": name, "ready": True})
    plane.registry.get(name, version)  # 404 (unknown) or 503 (loading) with the usual message
    raise BadRequest(f"model {name!r} is not ready")


@guarded.get("/models/{name}/ready", summary="Model readiness (any version)")
async def model_ready(plane: PlaneDep, name: str = ModelName) -> Response:
    return await _ready(plane, name, None)


@guarded.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def version_ready(plane: PlaneDep, name: str = ModelName, version: str = Version) -> Response:
    return await _ready(plane, name, version)


@guarded.get("/models/{name}/config", summary="Effective model configuration (Triton's JSON)")
async def model_config(plane: PlaneDep, name: str = ModelName) -> Response:
    return json_response(plane.model_config(name))


@guarded.get("/models/{name}/versions/{version}/config", summary="Configuration (one version)")
async def version_config(
    plane: PlaneDep, name: str = ModelName, version: str = Version
) -> Response:
    return json_response(plane.model_config(name, version))


# Repository extension


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object")
    return params


@guarded.post("/repository/index", summary="The models of the repository and their state")
async def repository_index(request: Request, plane: PlaneDep) -> Response:
    body = await _json_object(request)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequest("'ready' must be true or false")
    return json_response(await plane.repository_index(ready_only))


@guarded.post(
    "/repository/models/{name:path}/load",
    summary="Load or reload a model",
    dependencies=[AdminDep],
)
async def repository_load(request: Request, plane: PlaneDep, name: str = ModelName) -> Response:
    body = await _json_object(request)
    await plane.load(name, _parameters(body))
    return json_response({})


@guarded.post(
    "/repository/models/{name:path}/unload",
    summary="Unload a model (drains it first)",
    dependencies=[AdminDep],
)
async def repository_unload(request: Request, plane: PlaneDep, name: str = ModelName) -> Response:
    body = await _json_object(request)
    params = _parameters(body)
    unknown = sorted(set(params) - {"unload_dependents"})
    if unknown:
        raise BadRequest(f"unknown unload parameter(s) {unknown}")
    await plane.unload(name)
    return json_response({})


# Inference

INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                    "examples": [
                        {
                            "inputs": [
                                {
                                    "name": "coords",
                                    "shape": [1, 2],
                                    "datatype": "FP32",
                                    "data": [10, 20],
                                }
                            ],
                            "outputs": [{"name": "image", "parameters": {"binary_data": False}}],
                        }
                    ],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@guarded.post("/models/{name}/infer", summary="Inference", openapi_extra=INFER_DOC)
async def infer(request: Request, plane: PlaneDep, name: str = ModelName) -> Response:
    return await _infer(request, plane, name, None)


@guarded.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    openapi_extra=INFER_DOC,
)
async def infer_version(
    request: Request, plane: PlaneDep, name: str = ModelName, version: str = Version
) -> Response:
    return await _infer(request, plane, name, version)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false (a JSON boolean), got {value!r}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def _numbers(data: Any) -> Any:
    """JSON numbers as one numpy array where they form one (compact to hand back from a parsing
    process); anything else as it came, for the data plane to refuse with a message."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        return data
    return arr if arr.dtype.kind in "iuf" else data


# An input's binary data: (index of the input, first byte, byte count) after the JSON header.
BinaryRange = tuple[int, int, int]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A V2 infer body -> its JSON header and the binary tensor data after it (a view)."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 12:
        raise BadRequest(f"{HEADER_LENGTH} {header_length[:20]!r} is not a length in bytes")
    length = int(header_length)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} {length} is not a length within the body")
    return body[:length], memoryview(body)[length:]


def decode_header(
    header_bytes: bytes, binary_size: int, name: str, version: str | None
) -> tuple[InferRequest, dict[str, bool], list[BinaryRange]]:
    """A V2 infer request's JSON header -> the data plane's request (inputs sent as `data` are
    numpy arrays by now), whether each output goes binary, and where each binary input lies in
    the `binary_size` bytes that follow the header. Plain, picklable values only: this may run in
    a parsing process (service/dataplane/offload.py)."""
    header = parse_json(header_bytes)
    if not isinstance(header, dict):
        raise BadRequest("the inference request must be a JSON object")
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise BadRequest("'inputs' must be a non-empty list")
    inputs: list[InputTensor] = []
    ranges: list[BinaryRange] = []
    offset = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise BadRequest("each input must be an object")
        params = _object(spec.get("parameters"), "input parameters")
        t = InputTensor(
            name=str(spec.get("name")), datatype=str(spec.get("datatype")), shape=spec.get("shape")
        )
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in spec:
                raise BadRequest(f"input {t.name!r} has both 'data' and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input {t.name!r}: binary_data_size must be a byte count")
            if offset + size > binary_size:
                raise BadRequest(
                    f"input {t.name!r}: binary_data_size {size} but "
                    f"{binary_size - offset} bytes follow the JSON header"
                )
            ranges.append((i, offset, size))
            offset += size
        elif "data" in spec:
            t.data = _numbers(spec["data"])
        inputs.append(t)
    if offset != binary_size:
        raise BadRequest(
            f"{binary_size - offset} bytes follow the JSON header that no input's "
            "binary_data_size accounts for"
        )
    default_binary = _bool(
        _object(header.get("parameters"), "parameters").get("binary_data_output", False),
        "parameters.binary_data_output",
    )
    outputs = header.get("outputs")
    binary_out: dict[str, bool] = {}
    names: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list")
        names = []
        for out in outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest("each requested output must be an object with a 'name'")
            p = _object(out.get("parameters"), f"output {out['name']!r} parameters")
            if "classification" in p:
                raise BadRequest("the classification extension is not supported")
            binary_out[out["name"]] = _bool(
                p.get("binary_data", default_binary), f"output {out['name']!r} binary_data"
            )
            names.append(out["name"])
    request_id = header.get("id")
    req = InferRequest(
        model=name,
        version=version,
        inputs=inputs,
        id=request_id if isinstance(request_id, str) else None,
        outputs=names,
    )
    binary_out["*"] = default_binary
    return req, binary_out, ranges


def encode_infer(
    answer: InferResponse, binary_out: dict[str, bool], headers: dict[str, str]
) -> Response:
    response: dict[str, Any] = {
        "model_name": answer.model_name,
        "model_version": answer.model_version,
    }
    if answer.id is not None:
        response["id"] = answer.id
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for t in answer.outputs:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary_out.get(t.name, binary_out["*"]):
            raw = np.ascontiguousarray(t.data, dtype="<f4").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = t.data.reshape(-1)
        outputs.append(out)
    response["outputs"] = outputs
    if not chunks:
        return json_response(response, headers=headers)
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    headers[HEADER_LENGTH] = str(len(head))
    return Response(
        b"".join([head, *chunks]), media_type="application/octet-stream", headers=headers
    )


async def _infer(request: Request, plane: DataPlane, name: str, version: str | None) -> Response:
    # Resolved once: a 404 before decoding; the version found is held and answers.
    m = plane.resolve(name, version)
    with m.hold():
        body = await request.body()
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        # Only the JSON header is parsed; binary tensors stay views of the body.
        req, binary_out, ranges = await plane.offload.run(
            Cost.PARSE, len(header), decode_header, header, len(binary), name, version
        )
        for i, start, size in ranges:
            req.inputs[i].raw = binary[start : start + size]
        answer = await unless_disconnected(request, plane.infer(req, m))
    return encode_infer(answer, binary_out, answered(request, answer))
