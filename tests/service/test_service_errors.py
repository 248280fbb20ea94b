"""Every bad input gets a 4xx whose message says what was wrong; none gets a 500."""

from __future__ import annotations

import base64
import io
import socket
import struct
import time
import zlib

import numpy as np
import pytest

from tests.helpers import live_server, npy_bytes, png_b64, png_bytes

ONE = np.zeros((64, 64), np.float32)


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG that claims to be enormous (a decompression bomb) with almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


def npy_object_array() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}

# (name, method, path, kwargs for httpx, expected status, text the message must contain)
CASES = [
    (
        "malformed json",
        "/v1/render",
        {"content": b'{"coords": [[1, 2]', "headers": JSON},
        400,
        "malformed JSON",
    ),
    ("empty body", "/v1/render", {"content": b"", "headers": JSON}, 400, "empty request body"),
    ("not an object", "/v1/render", {"json": [[1, 2]]}, 400, "must be a JSON object"),
    ("missing coords", "/v1/render", {"json": {"model": "render"}}, 400, "missing field 'coords'"),
    ("coords wrong type", "/v1/render", {"json": {"coords": "10,20"}}, 400, "list of [x, y]"),
    ("coords strings", "/v1/render", {"json": {"coords": [["a", "b"]]}}, 400, "numbers"),
    ("coords triples", "/v1/render", {"json": {"coords": [[1, 2, 3]]}}, 400, "shape [1, 3]"),
    ("coords booleans", "/v1/render", {"json": {"coords": [[True, 2]]}}, 400, "not booleans"),
    ("nan", "/v1/render", {"content": b'{"coords": [[NaN, 2]]}', "headers": JSON}, 400, "finite"),
    (
        "infinite",
        "/v1/render",
        {"content": b'{"coords": [[1e999, 2]]}', "headers": JSON},
        400,
        "finite",
    ),
    (
        "x above 63",
        "/v1/render",
        {"json": {"coords": [[64, 2]]}},
        400,
        "coords[0] = [64, 2] is outside the canvas [0, 63]",
    ),
    ("negative y", "/v1/render", {"json": {"coords": [[1, 2], [3, -0.5]]}}, 400, "coords[1]"),
    ("empty list", "/v1/render", {"json": {"coords": []}}, 400, "coords is empty"),
    (
        "too many",
        "/v1/render",
        {"json": {"coords": [[1, 1]] * 1025}},
        400,
        "at most 1024 per request",
    ),
    (
        "bad format",
        "/v1/render",
        {"json": {"coords": [[1, 1]], "format": "jpeg"}},
        400,
        "format must be 'png' or 'array'",
    ),
    (
        "model not a string",
        "/v1/render",
        {"json": {"coords": [[1, 1]], "model": 3}},
        400,
        "model must be a string",
    ),
    (
        "unknown field",
        "/v1/render",
        {"json": {"coords": [[1, 1]], "colour": "red"}},
        400,
        "unknown field(s) ['colour']",
    ),
    (
        "unknown model",
        "/v1/render",
        {"json": {"coords": [[1, 1]], "model": "nope"}},
        404,
        "unknown model 'nope'",
    ),
    (
        "wrong task",
        "/v1/render",
        {"json": {"coords": [[1, 1]], "model": "locate"}},
        400,
        "model 'locate' does 'locate'",
    ),
    (
        "wrong task locate",
        "/v1/locate",
        {"json": {"images": [ONE.tolist()], "model": "render"}},
        400,
        "does 'render'",
    ),
    (
        "content type",
        "/v1/render",
        {"content": b"x=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "Content-Type must be",
    ),
    (
        "locate content type",
        "/v1/locate",
        {"content": b"abc", "headers": {"Content-Type": "text/plain"}},
        415,
        "'text/plain' is not supported",
    ),
    (
        "accept",
        "/v1/render",
        {"json": {"coords": [[1, 1]]}, "headers": {"Accept": "image/gif"}},
        406,
        "cannot answer with 'image/gif'",
    ),
    (
        "image 32x32",
        "/v1/locate",
        {"json": {"images": [[[0.0] * 32] * 32]}},
        400,
        "must be 64x64, got [32, 32]",
    ),
    (
        "ragged image",
        "/v1/locate",
        {"json": {"images": [[[0.0] * 64] * 63 + [[0.0]]]}},
        400,
        "images[0]",
    ),
    (
        "png 32x32",
        "/v1/locate",
        {"json": {"images": [png_b64(np.zeros((32, 32)))]}},
        400,
        "PNG is 32x32 pixels, expected 64x64",
    ),
    (
        "pixel above 1",
        "/v1/locate",
        {"json": {"images": [(ONE + 2).tolist()]}},
        400,
        "images[0] has values outside [0, 1]",
    ),
    (
        "pixel nan (npy)",
        "/v1/locate",
        {"content": npy_bytes(np.full((1, 64, 64), np.nan, np.float32)), "headers": NPY},
        400,
        "NaN or infinite",
    ),
    (
        "invalid base64",
        "/v1/locate",
        {"json": {"images": ["not base64!!"]}},
        400,
        "images[0]: invalid base64",
    ),
    (
        "not a png",
        "/v1/locate",
        {"json": {"images": [base64.b64encode(b"GIF89a...").decode()]}},
        400,
        "not a PNG",
    ),
    (
        "truncated png",
        "/v1/locate",
        {"json": {"images": [base64.b64encode(png_bytes(ONE)[:60]).decode()]}},
        400,
        "corrupt or unreadable PNG",
    ),
    (
        "png bomb",
        "/v1/locate",
        {"json": {"images": [base64.b64encode(huge_png_header()).decode()]}},
        400,
        "PNG is 100000x100000 pixels, expected 64x64",
    ),
    (
        "multipart not png",
        "/v1/locate",
        {"files": [("images", ("a.png", b"hello", "image/png"))]},
        400,
        "images[0] (a.png): not a PNG",
    ),
    (
        "multipart no files",
        "/v1/locate",
        {"files": [("other", ("a.png", b"x", "image/png"))]},
        400,
        "images is empty",
    ),
    (
        "npy pickle",
        "/v1/locate",
        {"content": npy_object_array(), "headers": NPY},
        400,
        "needs pickle",
    ),
    (
        "npy wrong shape",
        "/v1/locate",
        {"content": npy_bytes(np.zeros((2, 32, 32), np.float32)), "headers": NPY},
        400,
        "shape (2, 32, 32); expected (N, 64, 64)",
    ),
    (
        "npy int",
        "/v1/locate",
        {"content": npy_bytes(np.zeros((1, 64, 64), np.int32)), "headers": NPY},
        400,
        "dtype int32",
    ),
    (
        "npy garbage",
        "/v1/locate",
        {"content": b"\x93NUMPY garbage", "headers": NPY},
        400,
        "not a valid NPY body",
    ),
    (
        "images item type",
        "/v1/locate",
        {"json": {"images": [42]}},
        400,
        "images[0] must be a base64 PNG string",
    ),
    ("unknown route", "/v1/nothing", {"json": {}}, 404, "Not Found"),
]


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gets_a_clear_4xx(client, name, path, kwargs, status, message) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_wrong_method_is_405(client) -> None:
    r = client.get("/v1/render")
    assert r.status_code == 405 and "detail" in r.json()


def test_body_over_the_limit_is_refused_before_it_is_read() -> None:
    with live_server(("locate",), max_body_bytes=4096) as live:
        with live.client() as c:
            r = c.post("/v1/locate", content=b"x" * 5000, headers=NPY)
            assert r.status_code == 413 and "limit of 4096 bytes" in r.json()["detail"]
            # Chunked (no Content-Length): refused as soon as the stream passes the limit.
            r = c.post("/v1/locate", content=iter([b"x" * 3000, b"x" * 3000]), headers=NPY)
            assert r.status_code == 413
        # Announce 1 GB and send nothing more: the answer comes at once.
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
            start = time.monotonic()
            s.sendall(
                b"POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                b"\r\nContent-Length: 1000000000\r\n\r\n"
            )
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 413")
            assert time.monotonic() - start < 2


def test_api_key_guards_inference_routes_only() -> None:
    with live_server(("render",), api_key="s3cret") as live, live.client() as c:
        body = {"coords": [[10, 10]]}
        missing = c.post("/v1/render", json=body)
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/render", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.json()["detail"]
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/render", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/"):
            assert c.get(open_path).status_code == 200, open_path


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/render", {"coords": [["1.5", "2"]]}, "pairs of numbers"),
        ("/v1/locate", {"images": [[["0.5"] * 64] * 64]}, "nested lists of numbers"),
    ],
)
def test_numbers_sent_as_strings_are_refused(client, path, body, message) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400 and message in r.json()["detail"]
