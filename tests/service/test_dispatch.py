"""The fast dispatch of the hot routes (service/http/dispatch.py) is read off the app's own route
table: the same paths, parameters and auth as FastAPI's dispatch of the same routes, which these
tests check by sending the same requests to a server with it and one without it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import APIRouter, Query
from fastapi.routing import APIRoute

from service.dataplane.auth import Scope
from service.http import v1, v2
from service.http.app import HOT_ENDPOINTS
from service.http.dispatch import FastDispatch, FastRoute
from tests.helpers import LiveServer, live_server, npy_bytes

KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[LiveServer, LiveServer]]:
    with (
        live_server(api_key=KEY, fast_dispatch=True) as fast,
        live_server(api_key=KEY, fast_dispatch=False) as slow,
    ):
        yield fast, slow


def fast_dispatch(live: LiveServer) -> FastDispatch | None:
    stack: Any = live.app.middleware_stack
    while stack is not None and not isinstance(stack, FastDispatch):
        stack = getattr(stack, "app", None)
    return stack


def test_the_table_is_the_apps_hot_routes(pair: tuple[LiveServer, LiveServer]) -> None:
    fast, slow = pair
    table = fast_dispatch(fast)
    assert table is not None and fast_dispatch(slow) is None
    routes = {r.route.endpoint: r for r in [*table.exact.values(), *table.patterns]}
    assert set(routes) == set(HOT_ENDPOINTS)
    assert routes[v1.render].query_args == ()
    assert [(a, q) for a, q, _ in routes[v1.locate].query_args] == [
        ("model", "model"),
        ("version", "version"),
    ]
    assert routes[v2.infer_version].path_args == ("name", "version")
    assert all(r.scopes == (Scope.INFERENCE,) for r in routes.values())  # the inference key


def test_a_declaration_it_cannot_honour_is_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/count")
    async def count(n: int = Query(1)) -> dict[str, int]:
        return {"n": n}

    route = router.routes[0]
    assert isinstance(route, APIRoute)
    with pytest.raises(TypeError, match="parameter 'n' is not a string"):
        FastRoute.of(route)


x1 = np.zeros((1, 64, 64), np.float32)
x1[0, 10:19, 20:29] = 1.0
CASES: list[tuple[str, str, dict[str, str], Any]] = [
    ("/v1/render", "ok", {**AUTH, **JSON}, {"coords": [[10, 20]], "format": "array"}),
    ("/v1/render", "no key", JSON, {"coords": [[10, 20]]}),
    ("/v1/render", "wrong key", {"authorization": "Bearer nope", **JSON}, {"coords": [[1, 2]]}),
    ("/v1/render", "bad coords", {**AUTH, **JSON}, {"coords": [[100, 2]]}),
    ("/v1/render", "bad type", {**AUTH, "content-type": "text/plain"}, {"coords": [[1, 2]]}),
    ("/v1/render", "accept", {**AUTH, **JSON, "accept": "image/gif"}, {"coords": [[1, 2]]}),
    ("/v1/render?version=1", "query ignored", {**AUTH, **JSON}, {"coords": [[5, 5]]}),
    ("/v1/locate", "npy", {**AUTH, "content-type": "application/x-npy"}, npy_bytes(x1)),
    (
        "/v1/locate?version=1",
        "npy v1",
        {**AUTH, "content-type": "application/x-npy"},
        npy_bytes(x1),
    ),
    (
        "/v1/locate?model=render",
        "task",
        {**AUTH, "content-type": "application/x-npy"},
        npy_bytes(x1),
    ),
    ("/v1/locate?model=nope", "unknown", {**AUTH, "content-type": "application/x-npy"}, b"x"),
    (
        "/v2/models/render/infer",
        "v2",
        AUTH,
        {"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [3, 4]}]},
    ),
    ("/v2/models/render/infer", "v2 no key", {}, {"inputs": []}),
    ("/v2/models/nope/infer", "v2 unknown", AUTH, {"inputs": []}),
    ("/v2/models/render/infer", "v2 bad json", AUTH, b"{"),
    (
        "/v2/models/render/versions/1/infer",
        "v2 version",
        AUTH,
        {"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [3, 4]}]},
    ),
    ("/v2/models/render/versions/9/infer", "v2 no version", AUTH, {"inputs": []}),
]


@pytest.mark.parametrize(("path", "what", "headers", "body"), CASES, ids=[c[1] for c in CASES])
def test_both_dispatches_answer_alike(
    pair: tuple[LiveServer, LiveServer], path: str, what: str, headers: dict[str, str], body: Any
) -> None:
    answers = []
    for live in pair:
        with live.client() as c:
            content = body if isinstance(body, bytes) else None
            r = c.post(path, headers=headers, content=content, json=None if content else body)
        kept = {k: v for k, v in r.headers.items() if k.startswith("x-model") or k in KEPT}
        answers.append((r.status_code, kept, r.content))
    assert answers[0] == answers[1]


KEPT = {"content-type", "www-authenticate", "retry-after"}


def test_both_dispatches_label_the_metrics_alike(pair: tuple[LiveServer, LiveServer]) -> None:
    lines = []
    for live in pair:
        with live.client() as c:
            c.post("/v2/models/render/versions/1/infer", headers=AUTH, json=CASES[-2][3])
            text = c.get("/metrics").text
        lines.append(
            sorted(
                line.split(" ")[0]
                for line in text.splitlines()
                if line.startswith("coordconv_requests_total{") and "infer" in line
            )
        )
    assert lines[0] == lines[1]
    assert any('route="/v2/models/{name}/versions/{version}/infer"' in x for x in lines[0])
    assert any('model="render"' in x and 'version="1"' in x for x in lines[0])
