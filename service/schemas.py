"""Pydantic models that document the API in /docs (with examples). The hot paths parse and encode
with orjson and numpy instead of validating every float through pydantic: these models describe
the wire format, the codecs enforce it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Coordinate = Annotated[float, Field(ge=0, le=63)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]
Pixel = Annotated[float, Field(ge=0, le=1)]
Row = Annotated[list[Pixel], Field(min_length=64, max_length=64)]
ImageArray = Annotated[list[Row], Field(min_length=64, max_length=64)]


class RenderRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"coords": [[10, 20], [40.5, 33]], "model": "render", "format": "png"}]
        },
    )
    coords: list[list[float]] = Field(
        ...,
        description="(x, y) pairs in pixels, x the column, y the row, each in [0, 63]",
        min_length=1,
    )
    model: str = Field("render", description="`render` (9x9 squares) or `pixel` (heatmaps)")
    format: Literal["png", "array"] = Field(
        "png", description="base64 PNG strings, or 64x64 nested lists of floats"
    )


class RenderResponse(BaseModel):
    model: str
    version: str
    images: list[Any] = Field(..., description="base64 PNGs, or 64x64 nested lists of floats")


class LocateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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
    images: list[str | list[list[float]]] = Field(
        ...,
        min_length=1,
        description="base64 PNGs (a data:image/png;base64, prefix is accepted) or 64x64 nested "
        "lists of floats in [0, 1]",
    )
    model: str = Field("locate", description="a model whose task is `locate`")


class LocateResponse(BaseModel):
    model: str
    version: str
    coords: list[list[float]] = Field(..., description="(x, y) in pixels, one pair per image")


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str
    arch: str
    split: str | None
    sha256: str
    provider: str
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
