"""One pure ASGI middleware for what every request needs, cheaper than a stack of Starlette
middlewares: a request id, the body limit (413 before the body is read when Content-Length says
so, and as soon as a streamed body passes it), the limit of requests in flight (503 +
Retry-After in the route's error format; health routes exempt), request metrics, one log line
per request and, with tracing on, the request's server span (the caller's W3C `traceparent`
honoured; service/metrics/tracing.py). The model and version that answered come from the
request's state, where the routes put them (service/http/responses.py `answered`).
Connection-level limits live in service/http/connections.py."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.http.errors import error_body
from service.metrics import Metrics, tracing

log = logging.getLogger("coordconv.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Probes and scrapes are never refused for capacity: an orchestrator must see a busy server as
# alive and ready, not restart it.
HEALTH_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/"}
)


class ServiceMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, max_concurrency: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        # Request ids: a random per-process prefix and a counter (unique, and no getrandom
        # system call per request as uuid4 would make).
        self.id_prefix = uuid.uuid4().hex[:16]
        self.ids = itertools.count()
        # (route, model, version, status) -> its request counter and latency histogram.
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not REQUEST_ID_RE.match(rid):
            rid = f"{self.id_prefix}{next(self.ids):08x}"
        facts = scope.setdefault("state", {})  # request.state: the routes add model and version
        facts["request_id"] = rid
        path: str = scope["path"]
        status = 500
        tracer = tracing.tracer
        span = token = None
        if tracer is not None and path not in HEALTH_PATHS:  # probes and scrapes: no traces
            span, token = tracing.start_request(
                tracer,
                scope["method"],
                headers,
                tracing.HEADERS,
                {
                    "http.request.method": scope["method"],
                    "url.path": path,
                    "url.scheme": scope.get("scheme", "http"),
                    "coordconv.request_id": rid,
                },
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                hdrs = [*message.get("headers", ()), (b"x-request-id", rid.encode("latin-1"))]
                message = {**message, "headers": hdrs}
            await send(message)

        async def reject(code: int, message: str, extra: list[tuple[bytes, bytes]]) -> None:
            body = error_body(path, message)
            await send_wrapper(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send_wrapper({"type": "http.response.body", "body": body})

        try:
            length = headers.get(b"content-length")
            if path in HEALTH_PATHS:
                await self.app(scope, receive, send_wrapper)
            elif length is not None and (
                not length.isdigit() or len(length) > 18 or int(length) > self.max_body
            ):
                await reject(
                    413,
                    f"request body exceeds the limit of {self.max_body} bytes (MAX_BODY_BYTES)",
                    [(b"connection", b"close")],
                )
            elif self.in_flight >= self.max_concurrency:
                await reject(
                    503,
                    f"too many requests in flight (limit {self.max_concurrency}); retry later",
                    [(b"retry-after", b"1")],
                )
            else:
                self.in_flight += 1
                try:
                    await self.app(scope, self._limited(receive), send_wrapper)
                finally:
                    self.in_flight -= 1
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            model, version = facts.get("model", ""), facts.get("version", "")
            elapsed = time.perf_counter() - start
            key = (route_path, model, version, status)
            children = self._children.get(key)
            if children is None:  # prometheus_client's labels() costs microseconds per call
                m = self.metrics
                children = self._children[key] = (
                    m.requests.labels(
                        route=route_path,
                        model=model,
                        version=version,
                        status=str(status),
                        protocol="http",
                    ),
                    m.request_duration.labels(
                        route=route_path, model=model, version=version, protocol="http"
                    ),
                )
            children[0].inc()
            children[1].observe(elapsed)
            if span is not None:
                span.update_name(f"{scope['method']} {route_path}")
                span.set_attributes(
                    {
                        "http.route": route_path,
                        "http.response.status_code": status,
                        "coordconv.model": model,
                        "coordconv.model_version": version,
                    }
                )
                tracing.end_request(span, token, f"HTTP {status}" if status >= 500 else None)
            if log.isEnabledFor(logging.INFO):  # skip building the record on the hot path
                log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    extra={
                        "request_id": rid,
                        "status": status,
                        "path": path,
                        "method": scope["method"],
                        "duration_ms": round(elapsed * 1000, 2),
                        "model": model,
                        "version": version,
                        "protocol": "http",
                    },
                )

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(
                        f"request body exceeds the limit of {limit} bytes (MAX_BODY_BYTES)"
                    )
            return message

        return wrapped
