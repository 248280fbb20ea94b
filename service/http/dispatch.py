"""The inference routes without FastAPI's per-request machinery.

POST /v1/render, /v1/locate and /v2/models/{name}[/versions/{version}]/infer carry nearly all the
traffic. FastAPI would pass them through its exception, exit-stack and routing layers and solve
their dependencies on every request; here a table of regular expressions finds the same endpoint
functions, which get the same arguments (the request, the service state, the path and query
parameters) after the same API key check, and errors become the same responses. The FastAPI
routes stay for OpenAPI, other methods (405) and everything else.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import Response
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http import v1, v2
from service.http.deps import ServiceState, check_api_key

Call = Callable[[Request, ServiceState, dict[str, str]], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Response]


@dataclass(frozen=True)
class FastRoute:
    path: str  # the template, as FastAPI names the route (the metrics' route label)
    call: Call

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)))


TABLE = (
    FastRoute("/v1/render", lambda r, s, p: v1.render(r, s)),
    FastRoute(
        "/v1/locate",
        lambda r, s, p: v1.locate(r, s, r.query_params.get("model"), r.query_params.get("version")),
    ),
    FastRoute("/v2/models/{name}/infer", lambda r, s, p: v2.infer(r, s, p["name"])),
    FastRoute(
        "/v2/models/{name}/versions/{version}/infer",
        lambda r, s, p: v2.infer_version(r, s, p["name"], p["version"]),
    ),
)


class FastPath:
    def __init__(self, app: ASGIApp, state: ServiceState, on_error: ErrorHandler) -> None:
        self.app = app
        self.state = state
        self.on_error = on_error
        self.exact = {r.path: r for r in TABLE if "{" not in r.path}
        self.patterns = [(r.pattern, r) for r in TABLE if "{" in r.path]

    def _find(self, path: str) -> tuple[FastRoute, dict[str, str]] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for pattern, route in self.patterns:
            match = pattern.fullmatch(path)
            if match is not None:
                return route, match.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self._find(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            check_api_key(self.state.settings.api_key, request.headers.get("authorization", ""))
            response = await route.call(request, self.state, params)
        except Exception as exc:
            response = self.on_error(request, exc)
        await response(scope, receive, send)
