"""The Open Inference Protocol (KServe V2) as NVIDIA Triton speaks it over HTTP, so that
`tritonclient.http` and other V2 clients work unchanged. Errors are `{"error": message}`.

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

from coordconv import __version__
from service import codecs
from service.errors import BadRequest, NotFound
from service.registry import Model
from service.routes.common import disconnect_waiter, json_response, model_headers, parse_json
from service.schemas import V2Error, error_responses
from service.state import AuthDep, ServiceDep, ServiceState

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
Version = Path(description="model version; only the highest is served")


@health.get("/live", summary="Server liveness")
async def live() -> Response:
    return json_response({"live": True})


@health.get("/ready", summary="Server readiness")
async def ready(state: ServiceDep) -> Response:
    if not state.ready:
        return json_response({"error": "models are not loaded"}, 503, {"Retry-After": "1"})
    return json_response({"ready": True})


@guarded.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response(
        {
            "name": "coordconv",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_configuration"],
        }
    )


def _model(state: ServiceState, name: str, version: str | None) -> Model:
    model, _ = state.model(name)
    if version is not None and version != model.version:
        raise NotFound(
            f"model {name!r} version {version!r} is not served; available: {model.version!r}"
        )
    return model


def _metadata(model: Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape]}
        ],
        "outputs": [
            {"name": model.output_name, "datatype": "FP32", "shape": [-1, *model.output_shape]}
        ],
    }


def _config(model: Model, max_batch_size: int) -> dict[str, Any]:
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": [
            {"name": model.input_name, "data_type": "TYPE_FP32", "dims": list(model.input_shape)}
        ],
        "output": [
            {"name": model.output_name, "data_type": "TYPE_FP32", "dims": list(model.output_shape)}
        ],
        "dynamic_batching": {},
        "parameters": {"coordconv.task": {"string_value": model.task}},
    }


@guarded.get("/models/{name}", summary="Model metadata")
async def model_metadata(state: ServiceDep, name: str = ModelName) -> Response:
    return json_response(_metadata(_model(state, name, None)))


@guarded.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(
    state: ServiceDep, name: str = ModelName, version: str = Version
) -> Response:
    return json_response(_metadata(_model(state, name, version)))


@guarded.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(state: ServiceDep, name: str = ModelName) -> Response:
    model = _model(state, name, None)
    return json_response({"name": model.name, "ready": True})


@guarded.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def model_version_ready(
    state: ServiceDep, name: str = ModelName, version: str = Version
) -> Response:
    model = _model(state, name, version)
    return json_response({"name": model.name, "ready": True})


@guarded.get("/models/{name}/config", summary="Model configuration (Triton's JSON form)")
async def model_config(state: ServiceDep, name: str = ModelName) -> Response:
    return json_response(_config(_model(state, name, None), state.settings.max_batch_size))


@guarded.get(
    "/models/{name}/versions/{version}/config", summary="Model configuration (one version)"
)
async def model_version_config(
    state: ServiceDep, name: str = ModelName, version: str = Version
) -> Response:
    return json_response(_config(_model(state, name, version), state.settings.max_batch_size))


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
async def infer(request: Request, state: ServiceDep, name: str = ModelName) -> Response:
    return await _infer(request, state, name, None)


@guarded.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    openapi_extra=INFER_DOC,
)
async def infer_version(
    request: Request, state: ServiceDep, name: str = ModelName, version: str = Version
) -> Response:
    return await _infer(request, state, name, version)


def _split_body(request: Request, body: bytes) -> tuple[Any, bytes]:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return parse_json(body), b""
    if not raw.isdigit() or int(raw) > len(body):
        raise BadRequest(f"{HEADER_LENGTH} {raw!r} is not a length within the body")
    n = int(raw)
    return parse_json(body[:n]), body[n:]


def _input_tensor(
    header: dict[str, Any], binary: bytes, model: Model, max_batch: int
) -> np.ndarray:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    if len(inputs) != 1:
        raise BadRequest(f"model {model.name!r} takes one input, got {len(inputs)}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise BadRequest("each input must be an object")
    if spec.get("name") != model.input_name:
        raise BadRequest(
            f"unknown input {spec.get('name')!r}; model {model.name!r} takes {model.input_name!r}"
        )
    if spec.get("datatype") != "FP32":
        raise BadRequest(f"input {model.input_name!r} must be FP32, got {spec.get('datatype')!r}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or tuple(shape[1:]) != model.input_shape
        or len(shape) != len(model.input_shape) + 1
    ):
        want = ["N", *model.input_shape]
        raise BadRequest(f"input {model.input_name!r} has shape {shape}; expected {want}")
    batch = shape[0]
    if batch < 1:
        raise BadRequest(f"input {model.input_name!r}: batch size must be >= 1, got {batch}")
    if batch > max_batch:
        raise BadRequest(
            f"input {model.input_name!r}: batch size {batch} exceeds MAX_BATCH_SIZE {max_batch}"
        )
    count = int(np.prod(shape))
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("input parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise BadRequest(f"input {model.input_name!r} has both 'data' and binary_data_size")
        if size != count * 4:
            raise BadRequest(
                f"input {model.input_name!r}: binary_data_size {size} != "
                f"{count} FP32 values ({count * 4} bytes)"
            )
        if len(binary) != size:
            raise BadRequest(
                f"input {model.input_name!r}: binary_data_size {size} but "
                f"{len(binary)} bytes follow the JSON header"
            )
        return np.frombuffer(binary, dtype="<f4").reshape(shape).astype(np.float32)
    if binary:
        raise BadRequest(
            f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size"
        )
    if "data" not in spec:
        raise BadRequest(f"input {model.input_name!r} has neither 'data' nor binary_data_size")
    try:
        with np.errstate(over="ignore"):  # huge values become inf; the checks refuse them
            arr = np.asarray(spec["data"], dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(
            f"input {model.input_name!r}: data must be numbers (flat or nested)"
        ) from None
    if arr.size != count:
        raise BadRequest(
            f"input {model.input_name!r}: {arr.size} values for shape {shape} ({count} values)"
        )
    return arr.reshape(shape)


def _binary_outputs(header: dict[str, Any], model: Model) -> bool:
    params = header.get("parameters") or {}
    binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = header.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list")
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != model.output_name:
            got = out.get("name") if isinstance(out, dict) else out
            raise BadRequest(
                f"unknown output {got!r}; model {model.name!r} has {model.output_name!r}"
            )
        p = out.get("parameters") or {}
        if isinstance(p, dict) and "binary_data" in p:
            binary = bool(p["binary_data"])
    return binary


async def _infer(request: Request, state: ServiceState, name: str, version: str | None) -> Response:
    model = _model(state, name, version)
    batcher = state.batchers[model.name]
    header, binary = _split_body(request, await request.body())
    if not isinstance(header, dict):
        raise BadRequest("the inference request must be a JSON object")
    x = _input_tensor(header, binary, model, state.settings.max_batch_size)
    if model.task == "locate":
        codecs.check_images(x, model.input_name)
    else:
        codecs.check_coords_array(x, model.input_name)
    as_binary = _binary_outputs(header, model)
    y = await batcher.infer(x, disconnect_waiter(request))
    out: dict[str, Any] = {"name": model.output_name, "datatype": "FP32", "shape": list(y.shape)}
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if isinstance(header.get("id"), str):
        response["id"] = header["id"]
    headers = model_headers(model)
    if not as_binary:
        out["data"] = y.reshape(-1)
        response["outputs"] = [out]
        return json_response(response, headers=headers)
    raw = np.ascontiguousarray(y, dtype="<f4").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    response["outputs"] = [out]
    head = orjson.dumps(response)
    headers[HEADER_LENGTH] = str(len(head))
    return Response(head + raw, media_type="application/octet-stream", headers=headers)
