"""The HTTP app factory: `create_app(settings)`. The lifespan starts the model registry (load,
verify and warm every start-up model version, one batcher each); the routers adapt the data plane
to HTTP; exception handlers map typed errors to status codes; no input yields a 500."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from coordconv import __version__
from service.dataplane.offload import BodyParser
from service.dataplane.plane import DataPlane
from service.errors import ServiceError
from service.http import health, v1, v2
from service.http.deps import ServiceState
from service.http.dispatch import FastPath
from service.http.middleware import ServiceMiddleware, error_body
from service.http.schemas import ANY_ROUTE
from service.metrics import Metrics
from service.models.registry import ModelRegistry
from service.scaling.cluster import Cluster
from service.settings import Settings

log = logging.getLogger("coordconv.app")

# FastAPI asks the global OpenTelemetry providers on every request whether it should trace;
# unless opted in, it should not.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

DESCRIPTION = """
CoordConv models (Liu et al., 2018) on onnxruntime. **render** turns pixel coordinates into
images of a 9x9 square (or the `pixel` model's heatmap); **locate** turns images back into
coordinates. Coordinates are pixels `(x, y)`, x the column, y the row, in [0, 63] on a 64x64 canvas.

The Open Inference Protocol (`/v2`, as NVIDIA Triton speaks it) serves the same models to
`tritonclient` and other KServe V2 clients.
"""


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(request.url.path, message),
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
    if isinstance(exc, ServiceError):
        return _error(request, exc.status_code, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return _error(request, 400, _validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))
    if isinstance(exc, ClientDisconnect):  # nobody reads this answer
        return _error(request, 499, "the client closed the connection")
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(request, 500, "internal server error (logged with the request id)")


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    cluster: Cluster | None = None,
) -> FastAPI:
    """The HTTP front end. With `registry` (already started, on the same event loop) the lifespan
    serves it as it is; otherwise the lifespan starts one and stops it on the way out. `cluster`:
    this process is one of `--workers N` (service/cluster.py)."""
    settings = settings or Settings()
    metrics = Metrics()
    owned = registry is None
    registry = registry or ModelRegistry(settings, metrics)
    state = ServiceState(
        settings,
        registry.metrics,
        registry,
        DataPlane(settings, registry, cluster),
        BodyParser(settings.parse_processes),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await registry.start()  # raises RepositoryError: start-up stops
        if settings.grpc_port:  # the gRPC front end, on this event loop, over the same plane
            from service.grpc.server import GrpcFrontEnd

            state.grpc = GrpcFrontEnd(state.dataplane, settings, registry.metrics)
            await state.grpc.start()
        try:
            yield
        finally:
            await state.stop_grpc()
            state.accepting = False
            state.parser.close()
            if owned:
                await registry.stop()

    app = FastAPI(
        title="CoordConv serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below from local files: no CDN
        redoc_url=None,
        responses=ANY_ROUTE,
        telemetry=None if settings.opentelemetry else NO_TELEMETRY,
    )
    app.state.service = state

    static = resources.files("fastapi_offline") / "static"
    app.mount("/docs-static", StaticFiles(directory=str(static)), name="docs-static")
    app.mount("/static", StaticFiles(directory=str(health.STATIC)), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="CoordConv serving - API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon.png",
        )

    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(v2.health)
    app.include_router(v2.guarded)

    for exc_class in (
        ServiceError,
        RequestValidationError,
        StarletteHTTPException,
        ClientDisconnect,
        Exception,
    ):
        app.add_exception_handler(exc_class, _handle)

    # Inner to the middleware below: the hot routes skip FastAPI's layers (service/fastpath.py).
    app.add_middleware(FastPath, state=state, on_error=error_response)
    app.add_middleware(
        ServiceMiddleware,
        metrics=registry.metrics,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
    )
    return app
