"""What the HTTP adapters share: JSON in and out with orjson, Accept negotiation, the model
headers (and the same facts in the request's state, where the middleware's metrics and log line
read them), and the cancellation of a request whose client went away."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response

from service.dataplane.types import InferResponse
from service.errors import BadRequest, ClientClosedRequest, NotAcceptable

T = TypeVar("T")
# Only a request still waiting after this starts to watch for its client going away: most are
# answered sooner, and a task per request costs.
WATCH_AFTER_S = 0.05

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


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, in this request's task, cancelled if the client goes away meanwhile: as gRPC
    cancels the task of a call its client cancelled, so the batcher drops what has not run (one
    mechanism for both). Then ClientClosedRequest (499). Only valid once the body has been read
    in full (the next ASGI message is then the disconnect)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    receive = request.receive
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            await asyncio.sleep(0)

    def left(w: asyncio.Task[None]) -> None:
        nonlocal gone
        if not w.cancelled() and w.exception() is None:
            gone = True
            task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(wait())
        watcher.add_done_callback(left)

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # ours, not the server's
            raise ClientClosedRequest("the client closed the connection") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(left)
            watcher.cancel()
