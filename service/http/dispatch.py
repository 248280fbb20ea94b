"""The hot inference routes without FastAPI's per-request machinery, derived from the app's own
route table.

POST /v1/render, /v1/locate and /v2/models/{name}[/versions/{version}]/infer carry nearly all the
traffic. FastAPI passes each request through its exception, exit-stack and routing layers and
solves its dependencies anew; here the same APIRoute objects are matched with their own compiled
path patterns, and each endpoint is called with what its FastAPI declaration asks for (the
request, the data plane, path and query parameters), after the API key checks exactly where the
route declares them (`AuthDep`, `AdminDep`: each scope's check, in declaration order). Nothing
about a route is written twice: a route whose declaration the fast dispatch cannot honour
(another dependency, a header, body or non-string parameter) is refused when the app is built,
and tests/service/test_dispatch.py checks both dispatches answer alike.

`FAST_DISPATCH=false` leaves every route to FastAPI (what the gain is measured against).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.dataplane import auth
from service.dataplane.plane import DataPlane
from service.http.deps import SCOPES, get_plane, keyring

Endpoint = Callable[..., Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Response]


@dataclass(frozen=True)
class FastRoute:
    """One route as the fast dispatch calls it, read off its FastAPI declaration."""

    route: APIRoute
    request_arg: str | None
    plane_args: tuple[str, ...]
    path_args: tuple[str, ...]
    query_args: tuple[tuple[str, str, Any], ...]  # (argument, query name, default)
    scopes: tuple[auth.Scope, ...]  # the key checks the route declares, in order

    @classmethod
    def of(cls, route: APIRoute) -> FastRoute:
        d = route.dependant
        where = f"fast dispatch of {sorted(route.methods or ())} {route.path}"
        for sub in d.dependencies:
            if sub.call is not get_plane and sub.call not in SCOPES:
                raise TypeError(f"{where}: cannot run the dependency {sub.call!r}")
        if d.header_params or d.cookie_params or d.body_params:
            raise TypeError(f"{where}: header, cookie and body parameters are not passed")
        for field in (*d.path_params, *d.query_params):
            if field.field_info.annotation not in (str, str | None):
                raise TypeError(f"{where}: parameter {field.name!r} is not a string")
        return cls(
            route=route,
            request_arg=d.request_param_name,
            plane_args=tuple(s.name for s in d.dependencies if s.call is get_plane and s.name),
            path_args=tuple(f.name for f in d.path_params),
            query_args=tuple((f.name, f.alias, f.field_info.default) for f in d.query_params),
            scopes=tuple(SCOPES[s.call] for s in d.dependencies if s.call in SCOPES),
        )

    def arguments(self, request: Request, plane: DataPlane, path: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict.fromkeys(self.plane_args, plane)
        if self.request_arg is not None:
            kwargs[self.request_arg] = request
        for name in self.path_args:
            kwargs[name] = path[name]
        if self.query_args:
            query = request.query_params
            for name, alias, default in self.query_args:
                kwargs[name] = query.get(alias, default)
        return kwargs


class FastDispatch:
    """ASGI middleware: a POST to one of `routes` goes straight to its endpoint."""

    def __init__(
        self,
        app: ASGIApp,
        plane: DataPlane,
        routes: Iterable[APIRoute],
        on_error: ErrorHandler,
    ) -> None:
        self.app = app
        self.plane = plane
        self.on_error = on_error
        table = [FastRoute.of(r) for r in routes if "POST" in (r.methods or ())]
        self.exact = {r.route.path: r for r in table if not r.path_args}
        self.patterns = [r for r in table if r.path_args]

    def find(self, path: str) -> tuple[FastRoute, dict[str, Any]] | None:
        fast = self.exact.get(path)
        if fast is not None:
            return fast, {}
        for fast in self.patterns:
            match = fast.route.path_regex.match(path)
            if match is not None:
                convert = fast.route.param_convertors
                return fast, {k: convert[k].convert(v) for k, v in match.groupdict().items()}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.find(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        fast, path = found
        scope["route"] = fast.route
        request = Request(scope, receive, send)
        try:
            ring = keyring(self.plane) if fast.scopes else None
            if ring is not None and ring.enabled:
                authorization = request.headers.get("authorization", "")
                for needed in fast.scopes:
                    ring.check(needed, authorization)
            endpoint: Endpoint = fast.route.endpoint
            response = await endpoint(**fast.arguments(request, self.plane, path))
        except Exception as exc:
            response = self.on_error(request, exc)
        await response(scope, receive, send)
