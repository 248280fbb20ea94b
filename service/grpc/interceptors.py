"""What every Open Inference Protocol RPC gets on the way in and out, as one server interceptor
(as MLServer wraps its servicer): the API key of each method's scope (the rule of
service/dataplane/auth.py, read from `authorization` metadata: RepositoryModelLoad and
RepositoryModelUnload need an admin key, the probes none, every other method an inference key),
typed errors as status codes, metrics with one log line and, with tracing on, each unary RPC's
server span (the caller's W3C `traceparent` metadata honoured; service/metrics/tracing.py;
ModelStreamInfer's spans are one per message, the servicer's). The servicer
(service/grpc/servicer.py) only adapts messages to the data plane.

Each method's handler is wrapped once and cached: the per-call cost is a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.dataplane.auth import KeyRing, Scope
from service.errors import ServiceError
from service.metrics import Metrics, tracing

log = logging.getLogger("coordconv.grpc")
SERVICE = "inference.GRPCInferenceService"
OPEN = frozenset({"ServerLive", "ServerReady"})  # probes: never authenticated
ADMIN = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})  # repository control

# One status code per typed error's HTTP status (the same errors HTTP answers with).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The codes that mark a server span as failed (OpenTelemetry's gRPC conventions).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


def authorization(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            return value
    return ""


async def abort(context: grpc.aio.ServicerContext, exc: ServiceError) -> None:
    """A typed error as its status code, message and `retry-after` trailing entry (raises)."""
    if exc.headers and "Retry-After" in exc.headers:
        context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
    await context.abort(CODES.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message)


class FrontDoor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyRing, metrics: Metrics) -> None:
        self.keys = keys
        self.metrics = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        service, _, name = method.lstrip("/").partition("/")
        if handler is None or service != SERVICE:  # health, reflection: as they are
            return handler
        auth = None if name in OPEN else Scope.ADMIN if name in ADMIN else Scope.INFERENCE
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler.unary_unary, auth),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            wrapped = grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, auth),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        self._handlers[method] = wrapped
        return wrapped

    def _check(self, context: grpc.aio.ServicerContext, auth: Scope | None) -> None:
        if auth is not None and self.keys.needs_key(auth):  # no metadata to read without one
            self.keys.check(auth, authorization(context))

    def _unary(self, name: str, behavior: Unary, auth: Scope | None) -> Unary:
        route = f"/{SERVICE}/{name}"
        traced = name not in OPEN  # probes: no traces
        span_name = f"{SERVICE}/{name}"
        span_attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            model = version = ""
            tracer = tracing.tracer
            span = token = None
            if tracer is not None and traced:
                span, token = tracing.start_request(
                    tracer,
                    span_name,
                    context.invocation_metadata() or (),
                    tracing.METADATA,
                    span_attributes,
                )
            try:
                self._check(context, auth)
                response = await behavior(request, context)
                model = getattr(response, "model_name", "")
                version = getattr(response, "model_version", "")
                return response
            except ServiceError as exc:
                code = CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
                await abort(context, exc)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", name)
                await context.abort(code, "internal server error (logged)")
            finally:
                self._observe(route, name, code, model, version, time.perf_counter() - start)
                if span is not None:
                    span.set_attributes(
                        {
                            "rpc.grpc.status_code": code.value[0],
                            "coordconv.model": model or getattr(request, "model_name", ""),
                            "coordconv.model_version": version,
                        }
                    )
                    tracing.end_request(span, token, code.name if code in SERVER_ERRORS else None)

        return call

    def _stream(self, behavior: Stream, auth: Scope | None) -> Stream:
        async def call(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                self._check(context, auth)
            except ServiceError as exc:
                await abort(context, exc)
            async for response in behavior(requests, context):
                yield response

        return call

    def _observe(
        self,
        route: str,
        name: str,
        code: grpc.StatusCode,
        model: str,
        version: str,
        elapsed: float,
    ) -> None:
        m = self.metrics
        m.requests.labels(
            route=route, model=model, version=version, status=code.name, protocol="grpc"
        ).inc()
        m.request_duration.labels(
            route=route, model=model, version=version, protocol="grpc"
        ).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "gRPC %s %s %.1fms",
                name,
                code.name,
                elapsed * 1000,
                extra={
                    "path": route,
                    "status": code.name,
                    "model": model,
                    "version": version,
                    "protocol": "grpc",
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
