"""What the HTTP adapters share: JSON in and out with orjson, Accept negotiation, the model
headers (and the same facts in the request's state, where the middleware's metrics and log line
read them), and a waiter that notices when the client goes away."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from service.dataplane.types import InferResponse
from service.errors import BadRequest, NotAcceptable

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


def answered(request: Request, answer: InferResponse) -> dict[str, str]:
    """The model headers of an answer; the same facts go into the request's state."""
    request.state.model = answer.model_name
    request.state.version = answer.model_version
    return {
        "X-Model-Name": answer.model_name,
        "X-Model-Version": answer.model_version,
        "X-Model-SHA256": answer.model_sha256,
    }


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
