"""HTTP error bodies, built in one place: /v2 answers `{"error": message}` (Open Inference
Protocol), everything else FastAPI's `{"detail": message}`; before a request's path is known (the
connection guards), both keys. Every exception a route can raise becomes its status and message;
anything unexpected is a logged 500 that names no server internals."""

from __future__ import annotations

import logging

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import ServiceError

log = logging.getLogger("coordconv.http")

# What app.add_exception_handler registers: every one ends in error_response.
HANDLED: tuple[type[Exception], ...] = (
    ServiceError,
    RequestValidationError,
    StarletteHTTPException,
    ClientDisconnect,
    Exception,
)


def error_body(path: str | None, message: str) -> bytes:
    if path is None:
        return orjson.dumps({"detail": message, "error": message})
    key = "error" if path.startswith("/v2") else "detail"
    return orjson.dumps({key: message})


def error(
    path: str | None, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(path, message),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def error_response(request: Request, exc: Exception) -> Response:
    """Every error as its status and message: typed errors, validation, routing (404, 405), a
    client gone mid-body (499), and anything else as a logged 500."""
    path = request.url.path
    if isinstance(exc, ServiceError):
        return error(path, exc.status_code, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return error(path, 400, _validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        return error(path, exc.status_code, str(exc.detail), getattr(exc, "headers", None))
    if isinstance(exc, ClientDisconnect):  # nobody reads this answer
        return error(path, 499, "the client closed the connection")
    log.error("unhandled error on %s %s", request.method, path, exc_info=exc)
    return error(path, 500, "internal server error (logged with the request id)")


async def handle(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)
