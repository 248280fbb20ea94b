"""The one rule for where a request is decoded (service/dataplane/offload.py), driven through
every protocol and encoding with real clients: {/v1 JSON, /v1 NPY, /v1 multipart, /v2 JSON, /v2
binary, gRPC raw, gRPC typed} x {small, just over the inline limit, just over the thread limit}
x {render, locate}. Every answer's values are checked against onnxruntime run directly on the
same inputs, and each request is checked to have been decoded where the rule says (inline, in a
thread, in a parsing process). A V2 binary request of over 1 MiB used to be a 500 (the parsing
process could not send memoryviews back)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.dataplane import offload
from service.dataplane.offload import INLINE_BYTES, THREAD_BYTES, Cost, Where
from tests.helpers import MODELS, LiveServer, live_server, npy_bytes, png_bytes

VERSION = "2"  # what a request without a version gets: the highest
SIZES = ("small", "over_inline", "over_thread")
ENCODINGS = ("v1_json", "v1_npy", "v1_multipart", "v2_json", "v2_binary", "grpc_raw", "grpc_typed")
Record = list[tuple[Cost, int, Where]]


@pytest.fixture(scope="module")
def placements() -> Iterator[Record]:
    """Every placement decision the server makes while this module runs."""
    seen: Record = []
    rule = offload.placement

    def recording(cost: Cost, size: int, processes: int) -> Where:
        where = rule(cost, size, processes)
        seen.append((cost, size, where))
        return where

    offload.placement = recording
    try:
        yield seen
    finally:
        offload.placement = rule


@pytest.fixture(scope="module")
def live(placements: Record) -> Iterator[LiveServer]:
    with live_server(parse_processes=1) as server:
        yield server


def reference(model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(MODELS / model / VERSION / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


def inputs(model: str, n: int, seed: int, noisy: bool) -> np.ndarray:
    """Render: coordinates with many digits; locate: squares (short JSON, small PNGs) or noise
    (long JSON, large PNGs), in values that 8-bit PNGs and JSON carry exactly."""
    rng = np.random.default_rng(seed)
    if model == "render":
        return rng.uniform(0, 63, size=(n, 2)).astype(np.float32)
    if noisy:
        return (rng.integers(0, 256, size=(n, 64, 64)) / 255.0).astype(np.float32)
    x = np.zeros((n, 64, 64), np.float32)
    for im, (cx, cy) in zip(x, rng.integers(4, 60, size=(n, 2)), strict=True):
        im[cy - 4 : cy + 5, cx - 4 : cx + 5] = 1.0
    return x


# How many items put each encoding's decoded bytes just over each limit (None: out of reach: a
# render request carries at most 64 pairs on /v2 and gRPC, 1024 on /v1, far under 1 MiB).
ITEMS: dict[tuple[str, str], dict[str, int | None]] = {
    ("render", "v1_json"): {"small": 4, "over_inline": 1000, "over_thread": None},
    ("render", "v2_json"): {"small": 4, "over_inline": None, "over_thread": None},
    ("render", "v2_binary"): {"small": 4, "over_inline": None, "over_thread": None},
    ("render", "grpc_raw"): {"small": 4, "over_inline": None, "over_thread": None},
    ("render", "grpc_typed"): {"small": 4, "over_inline": None, "over_thread": None},
    ("locate", "v1_json"): {"small": 1, "over_inline": 1, "over_thread": 16},
    ("locate", "v1_npy"): {"small": 1, "over_inline": 3, "over_thread": 65},
    ("locate", "v1_multipart"): {"small": 1, "over_inline": 12, "over_thread": 260},
    ("locate", "v2_json"): {"small": 1, "over_inline": 1, "over_thread": 16},
    ("locate", "v2_binary"): {"small": 1, "over_inline": 3, "over_thread": 64},
    ("locate", "grpc_raw"): {"small": 1, "over_inline": 3, "over_thread": 64},
    ("locate", "grpc_typed"): {"small": 1, "over_inline": 3, "over_thread": 64},
}


def send(live: LiveServer, model: str, encoding: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """`x` through one protocol and encoding; the answer's arrays by output name."""
    out = "image" if model == "render" else "coords"
    if encoding.startswith("v1"):
        with live.client() as c:
            if encoding == "v1_json" and model == "render":
                text = json.dumps({"coords": x.astype(np.float64).tolist(), "format": "array"})
                r = c.post("/v1/render", content=text, headers={"content-type": "application/json"})
                r.raise_for_status()
                return {out: np.asarray(r.json()["images"], dtype=np.float32)}
            if encoding == "v1_json":
                body = json.dumps({"images": x.astype(np.float64).tolist()})
                r = c.post("/v1/locate", content=body, headers={"content-type": "application/json"})
            elif encoding == "v1_npy":
                r = c.post(
                    "/v1/locate",
                    content=npy_bytes(x),
                    headers={"content-type": "application/x-npy"},
                )
            else:
                files = [
                    ("images", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(x)
                ]
                r = c.post("/v1/locate", files=files)
            r.raise_for_status()
            got = r.json()
            return {
                "coords": np.asarray(got["coords"]),
                "confidence": np.asarray(got["confidence"]),
            }
    name = "coords" if model == "render" else "image"
    outputs = [out] if model == "render" else ["coords", "confidence"]
    if encoding.startswith("v2"):
        client = thttp.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        t = thttp.InferInput(name, list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=encoding == "v2_binary")
        res = client.infer(model, [t], outputs=[thttp.InferRequestedOutput(o) for o in outputs])
        return {o: res.as_numpy(o) for o in outputs}
    target = f"127.0.0.1:{live.grpc_port}"
    if encoding == "grpc_raw":
        gclient = tgrpc.InferenceServerClient(target)
        g = tgrpc.InferInput(name, list(x.shape), "FP32")
        g.set_data_from_numpy(x)
        gres = gclient.infer(model, [g], outputs=[tgrpc.InferRequestedOutput(o) for o in outputs])
        return {o: gres.as_numpy(o) for o in outputs}
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        req = pb.ModelInferRequest(model_name=model)
        tensor = req.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=120)
    return {
        o.name: np.frombuffer(raw, "<f4").reshape(list(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


# Which placement each cell must reach: (cost, where) for its largest decoding step.
def expected(encoding: str, size: str) -> tuple[Cost, Where]:
    parse = encoding in ("v1_json", "v2_json")
    if size == "small":
        return (Cost.PARSE if parse else Cost.DECODE), Where.INLINE
    if parse:
        return Cost.PARSE, Where.THREAD if size == "over_inline" else Where.PROCESS
    return Cost.DECODE, Where.THREAD


CELLS = [
    (model, encoding, size)
    for model in ("render", "locate")
    for encoding in ENCODINGS
    for size in SIZES
    if (model, encoding) in ITEMS
]


@pytest.mark.parametrize(("model", "encoding", "size"), CELLS)
def test_every_encoding_answers_the_same_values_wherever_it_is_decoded(
    live: LiveServer, placements: Record, model: str, encoding: str, size: str
) -> None:
    n = ITEMS[(model, encoding)][size]
    if n is None:
        pytest.skip(f"a {model} request in {encoding} cannot reach {size}")
    x = inputs(model, n, seed=SIZES.index(size), noisy=size != "small")
    placements.clear()
    got = send(live, model, encoding, x)
    want = reference(model, x)
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name], atol=2e-4, err_msg=f"{name} differs")
    cost, where = expected(encoding, size)
    assert (cost, where) in {(c, w) for c, _, w in placements}, placements


def test_the_rule_itself() -> None:
    assert offload.placement(Cost.PARSE, INLINE_BYTES, 2) is Where.INLINE
    assert offload.placement(Cost.PARSE, INLINE_BYTES + 1, 2) is Where.THREAD
    assert offload.placement(Cost.PARSE, THREAD_BYTES + 1, 2) is Where.PROCESS
    assert offload.placement(Cost.PARSE, THREAD_BYTES + 1, 0) is Where.THREAD
    assert offload.placement(Cost.DECODE, THREAD_BYTES * 64, 2) is Where.THREAD


def test_a_bad_body_in_a_parsing_process_is_the_same_400(live: LiveServer) -> None:
    """Errors raised in a parsing process come back as they were raised."""
    images = inputs("locate", 16, seed=1, noisy=True).astype(np.float64).tolist()
    images[15][3][3] = 7.5  # out of range, noticed after the parse
    with live.client() as c:
        r = c.post("/v1/locate", json={"images": images})
        assert r.status_code == 400
        assert r.json()["detail"] == "images[15] has values outside [0, 1] (min 0, max 7.5)"
        broken = json.dumps({"images": images})[:-3]  # malformed, over 1 MiB
        r = c.post("/v1/locate", content=broken, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["detail"].startswith("malformed JSON")
