"""Typed errors, each with its HTTP status: the one vocabulary of failure for every layer. The
models and the data plane raise them; the HTTP front end turns them into `{"detail": message}`
(/v1) or `{"error": message}` (/v2) bodies (service/http/errors.py), the gRPC front end into
status codes (service/grpc/interceptors.py)."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    status_code = 500
    default_headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] | None = self.default_headers


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401
    default_headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A known key without the scope this call needs (an inference key asking to load)."""

    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class NotAcceptable(ServiceError):
    status_code = 406


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class ClientClosedRequest(ServiceError):
    """The client went away before its answer was ready (nginx's 499); nothing is sent."""

    status_code = 499


class InferenceFailed(ServiceError):
    """onnxruntime failed on a request's rows (logged with the cause); its neighbours in the
    batch are answered."""

    status_code = 500


class Unavailable(ServiceError):
    """Overload, a request queued too long, or not ready: 503 with Retry-After."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class RepositoryError(Exception):
    """The model repository cannot be served; the message names the path and the problem."""


class ModelError(Exception):
    """One model (or version) cannot be served: missing or bad config, a graph that disagrees
    with it, a corrupt file. One line naming the model, the file and the problem."""


class LoadCancelled(ModelError):
    """A load or warm-up stopped between two runs because the server is shutting down."""
