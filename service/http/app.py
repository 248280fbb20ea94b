"""The HTTP front end's app factory: `create_app(settings, plane)`. Routers adapt the data plane
to HTTP (/v1, /v2, health), exception handlers map every error to its status and message
(service/http/errors.py), one middleware does request ids, limits, metrics and the log line, and
the hot inference routes skip FastAPI's per-request layers (service/http/dispatch.py).

Given a started data plane (service/server.py composes it with gRPC), the app serves it as it is;
without one (Ray Serve replicas), its lifespan starts a registry and stops it on the way out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig

from coordconv import __version__
from service.dataplane.plane import DataPlane
from service.http import errors, health, v1, v2
from service.http.dispatch import FastDispatch
from service.http.middleware import ServiceMiddleware
from service.http.schemas import ANY_ROUTE
from service.settings import Settings

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


# The documentation site as `make docs` builds it (mkdocs.yml), served at /guide/ where it exists.
SITE = Path(__file__).resolve().parents[2] / "site"

ROUTERS = (health.router, v1.router, v2.health, v2.guarded)  # included as they are declared
# The routes that carry the traffic: dispatched without FastAPI's layers unless FAST_DISPATCH=false.
HOT_ENDPOINTS = (v1.render, v1.locate, v2.infer, v2.infer_version)


def hot_routes() -> list[APIRoute]:
    """The hot endpoints' routes as the routers declare them (paths with their prefixes, the
    routers' dependencies included): what FastAPI dispatches, since the app adds nothing."""
    hot = [
        r
        for router in ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute) and r.endpoint in HOT_ENDPOINTS
    ]
    if len(hot) != len(HOT_ENDPOINTS):
        raise RuntimeError(f"hot routes: found {[r.path for r in hot]}")
    return hot


def create_app(settings: Settings | None = None, plane: DataPlane | None = None) -> FastAPI:
    settings = settings or (plane.settings if plane is not None else Settings())
    owned = plane is None
    plane = plane or DataPlane.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await plane.control.start()  # raises RepositoryError: start-up stops
        try:
            yield
        finally:
            if owned:
                plane.close()
                await plane.control.stop()  # not ready from here on

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
    app.state.plane = plane

    static = resources.files("fastapi_offline") / "static"
    app.mount("/docs-static", StaticFiles(directory=str(static)), name="docs-static")
    app.mount("/static", StaticFiles(directory=str(health.STATIC)), name="static")
    if (SITE / "index.html").is_file():
        app.mount("/guide", StaticFiles(directory=str(SITE), html=True), name="guide")
    else:  # say why, rather than a bare Not Found

        @app.get("/guide/{path:path}", include_in_schema=False)
        async def no_guide(path: str) -> JSONResponse:
            return JSONResponse({"detail": "the documentation site is not built: make docs"}, 404)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="CoordConv serving - API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon.png",
        )

    for router in ROUTERS:
        app.include_router(router)
    for exc_class in errors.HANDLED:
        app.add_exception_handler(exc_class, errors.handle)

    if settings.fast_dispatch:  # inner to the middleware below
        app.add_middleware(
            FastDispatch, plane=plane, routes=hot_routes(), on_error=errors.error_response
        )
    app.add_middleware(
        ServiceMiddleware,
        metrics=plane.metrics,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
    )
    return app
