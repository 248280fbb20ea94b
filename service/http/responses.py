"""Helpers the HTTP adapters share: JSON in and out with orjson, Accept negotiation, model
headers, parsing off the event loop, and a waiter that notices when the client goes away."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response

from service.dataplane.offload import INLINE_BYTES
from service.dataplane.types import InferResponse
from service.errors import BadRequest, NotAcceptable

T = TypeVar("T")
NPY = "application/x-npy"
JSON = "application/json"


def json_response(
    obj: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson with numpy support: arrays are written without a .tolist() detour."""
    return Response(
        orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type=JSON,
        headers=headers,
    )


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("empty request body: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "infinity" in str(exc) or any(t in body for t in (b"NaN", b"Infinity")):
            raise BadRequest(
                "NaN and infinite numbers are not allowed: values must be finite"
            ) from None
        raise BadRequest(f"malformed JSON: {exc}") from None


def wants_npy(request: Request) -> bool:
    """True for `Accept: application/x-npy`; False for JSON or anything; 406 otherwise."""
    return _wants_npy(request.headers.get("accept", ""))


@functools.lru_cache(maxsize=256)  # clients send the same few Accept headers over and over
def _wants_npy(accept: str) -> bool:
    accept = accept.strip()
    if not accept:
        return False
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if NPY in types:
        return True
    if types & {JSON, "*/*", "application/*"}:
        return False
    raise NotAcceptable(f"cannot answer with {accept!r}: accept {JSON} or {NPY}")


def model_headers(response: InferResponse) -> dict[str, str]:
    return {
        "X-Model-Name": response.model_name,
        "X-Model-Version": response.model_version,
        "X-Model-SHA256": response.model_sha256,
    }


async def off_loop_if_large(size: int, func: Callable[..., T], *args: Any) -> T:
    """Run `func` inline for a small body, in a worker thread for a large one: for decoders
    that release the GIL (zlib, numpy copies). JSON goes to `BodyParser`, which holds it."""
    if size > INLINE_BYTES:
        return await asyncio.to_thread(func, *args)
    return func(*args)


def disconnect_waiter(request: Request) -> Callable[[], Coroutine[Any, Any, None]]:
    """A coroutine function that returns once the client has disconnected. Only valid after the
    body has been read in full (the next ASGI message is then the disconnect)."""
    receive = request.receive

    async def wait() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            await asyncio.sleep(0)

    return wait
