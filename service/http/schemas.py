"""The product API's request bodies: one pydantic model per body that both documents it in /docs
and checks it. The heavy fields (coordinate lists, images) are checked by numpy-backed
validators that turn them into arrays in one step, so the schema is the source of truth without
validating 4,096 floats per image one by one. Errors become one 400 line that names the field.

Response models document what the routes write (with orjson, not through pydantic).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)

from coordconv.contract import CANVAS
from service.dataplane import codecs
from service.errors import BadRequest


def check_count(n: int, what: str, limit: int) -> None:
    if n == 0:
        raise BadRequest(f"{what} is empty: send at least one item")
    if n > limit:
        raise BadRequest(
            f"{what} has {n} items; at most {limit} per request (MAX_ITEMS_PER_REQUEST)"
        )


def _limit(info: ValidationInfo) -> int:
    context = info.context or {}
    return int(context.get("max_items", 1024))


def _coords(value: Any, info: ValidationInfo) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRequest("coords must be a list of [x, y] pairs")
    check_count(len(value), "coords", _limit(info))
    return codecs.parse_coords(value)


def _images(value: Any, info: ValidationInfo) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRequest("images must be a list")
    check_count(len(value), "images", _limit(info))
    return codecs.decode_json_images(value)


def _version(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


POINT_SCHEMA = {
    "type": "array",
    "items": {"type": "number", "minimum": 0, "maximum": CANVAS - 1},
    "minItems": 2,
    "maxItems": 2,
}
Coords = Annotated[
    np.ndarray,
    PlainValidator(_coords),
    WithJsonSchema(
        {
            "type": "array",
            "items": POINT_SCHEMA,
            "minItems": 1,
            "description": "(x, y) pairs in pixels, x the column, y the row, each in [0, 63]",
        }
    ),
]
IMAGE_ARRAY_SCHEMA = {
    "type": "array",
    "items": {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1},
        "minItems": CANVAS,
        "maxItems": CANVAS,
    },
    "minItems": CANVAS,
    "maxItems": CANVAS,
}
Images = Annotated[
    np.ndarray,
    PlainValidator(_images),
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [{"type": "string"}, IMAGE_ARRAY_SCHEMA]},
            "description": "base64 PNGs (a data:image/png;base64, prefix is accepted) or 64x64 "
            "nested lists of floats in [0, 1]",
        }
    ),
]
Version = Annotated[
    Annotated[str, Field(pattern=r"^[0-9]{1,18}$")] | None,
    BeforeValidator(_version),
    Field(description="model version; default: the highest ready one"),
]


class RenderRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        json_schema_extra={
            "examples": [{"coords": [[10, 20], [40.5, 33]], "model": "render", "format": "png"}]
        },
    )
    coords: Coords
    model: str = Field("render", description="`render` (9x9 squares) or `pixel` (heatmaps)")
    version: Version = None
    format: Literal["png", "array"] = Field(
        "png", description="base64 PNG strings, or 64x64 nested lists of floats"
    )


class LocateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        json_schema_extra={
            "examples": [
                {
                    "images": [
                        # a 9x9 square centred on (10, 20)
                        "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAAAAACPAi4CAAAAQ0lEQVR4Ae3RMQ4AIAgEMPT/f9"
                        "ZBWWHWlIUQLgwlQhEgQOAIjNNWetw5x77PPlInHIj4wKB+si0BAgQIECBAgMCjAhv20wESAKo"
                        "+XQAAAABJRU5ErkJggg=="
                    ],
                    "model": "locate",
                }
            ]
        },
    )
    images: Images
    model: str = Field("locate", description="a model whose task is `locate`")
    version: Version = None


M = TypeVar("M", bound=BaseModel)


def parse_body(schema: type[M], body: bytes, max_items: int) -> M:
    """Parse and check a JSON body against `schema`; BadRequest with one line on any problem."""
    if not body.strip():
        raise BadRequest("empty request body: expected a JSON object")
    try:
        return schema.model_validate_json(body, context={"max_items": max_items})
    except ValidationError as exc:
        raise BadRequest(validation_message(exc, schema, body)) from None


def validation_message(exc: ValidationError, schema: type[BaseModel], body: bytes) -> str:
    errors = exc.errors(include_url=False)
    extra = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    if extra:
        return f"unknown field(s) {extra}; allowed: {sorted(schema.model_fields)}"
    e = errors[0]
    kind, loc = e["type"], ".".join(str(p) for p in e["loc"])
    if kind == "json_invalid":
        if any(t in body for t in (b"NaN", b"Infinity")):
            return "NaN and infinite numbers are not allowed: values must be finite"
        return f"malformed JSON: {e['ctx'].get('error', e['msg']) if e.get('ctx') else e['msg']}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "request body must be a JSON object"
    if kind == "missing":
        field = schema.model_fields[loc]
        return f"missing field '{loc}': {field.description or 'required'}"
    if loc == "version" and kind in ("string_type", "string_pattern_mismatch"):
        return f'version must be a number such as "1", got {e["input"]!r}'
    if kind == "string_type":
        return f"{loc} must be a string"
    if kind == "literal_error":
        return f"{loc} must be {e['ctx']['expected']}, got {e['input']!r}"
    if kind == "string_pattern_mismatch" and loc == "version":
        return f'version must be a number such as "1", got {e["input"]!r}'
    return f"{loc}: {e['msg']}"


class RenderResponse(BaseModel):
    model: str
    version: str
    images: list[Any] = Field(..., description="base64 PNGs, or 64x64 nested lists of floats")


class LocateResponse(BaseModel):
    model: str
    version: str
    coords: list[list[float]] = Field(..., description="(x, y) in pixels, one pair per image")
    confidence: list[float] | None = Field(
        None, description="how much to trust each point, 0..1 (models that answer one)"
    )
    ok: list[bool] | None = Field(
        None,
        description="the image shows exactly one 9x9 square or one lit pixel, and the point is "
        "where it is (confidence >= the model's threshold)",
    )


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelInfo(BaseModel):
    name: str
    version: str
    state: str
    task: str
    arch: str
    split: str | None
    sha256: str
    provider: str
    max_batch_size: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metrics: dict[str, Any]
    trained_at: str | None


class ModelList(BaseModel):
    models: list[ModelInfo]


class Error(BaseModel):
    detail: str = Field(..., description="what was wrong")


class V2Error(BaseModel):
    error: str = Field(..., description="what was wrong")


def error_responses(model: type[BaseModel], codes: dict[int, str]) -> dict[int | str, Any]:
    return {code: {"model": model, "description": text} for code, text in codes.items()}


# Answered on any route, by the middleware: documented without a body schema, because /v1 and
# /v2 shape their error bodies differently.
ANY_ROUTE: dict[int | str, Any] = {
    413: {"description": "request body over MAX_BODY_BYTES"},
    503: {"description": "overloaded, queued too long, or not ready; see Retry-After"},
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads its JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
