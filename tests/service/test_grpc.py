"""The Open Inference Protocol over gRPC, spoken by the real `tritonclient.grpc` against a real
server: every RPC, answers equal to HTTP's, streaming, repository control, auth, bad inputs with
the right status codes, health and reflection, and a fuzz that never sees INTERNAL/UNKNOWN."""

from __future__ import annotations

import asyncio
import queue
import shutil
from functools import partial

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import MODELS, TLS, live_server
from training import data

INPUTS = {
    "pixel": ("coords", "heatmap", lambda: data.centres()[::97]),
    "render": ("coords", "image", lambda: data.centres()[::97]),
    "locate": ("image", "coords", lambda: data.squares(data.centres()[::97])),
}


@pytest.fixture(scope="module")
def live():
    with live_server() as server:
        yield server


@pytest.fixture
def gc(live):
    c = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
    yield c
    c.close()


def grpc_infer(gc, name: str, x: np.ndarray, **kw) -> tgrpc.InferResult:
    in_name, out_name, _ = INPUTS[name]
    inp = tgrpc.InferInput(in_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x.astype(np.float32))
    return gc.infer(name, [inp], outputs=[tgrpc.InferRequestedOutput(out_name)], **kw)


def status_of(caught: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(caught.value.status())


def test_health_metadata_config_and_statistics(gc, live) -> None:
    assert gc.is_server_live() and gc.is_server_ready()
    meta = gc.get_server_metadata()
    assert meta.name == "coordconv" and "statistics" in meta.extensions
    for name, (in_name, out_name, _) in INPUTS.items():
        assert gc.is_model_ready(name) and gc.is_model_ready(name, "1")
        m = gc.get_model_metadata(name)
        assert m.versions == ["1", "2"] and m.platform == "onnxruntime_onnx"
        assert m.inputs[0].name == in_name and m.outputs[0].name == out_name
        assert m.inputs[0].shape[0] == -1
        cfg = gc.get_model_config(name).config
        assert cfg.name == name and cfg.max_batch_size == 64
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    http_cfg = httpx.get(live.url + "/v2/models/render/config", verify=TLS).json()
    assert (
        http_cfg["max_batch_size"]
        == gc.get_model_config("render", as_json=True)["config"]["max_batch_size"]
    )
    grpc_infer(gc, "render", data.centres()[:3])
    stats = gc.get_inference_statistics("render", "2").model_stats[0]
    assert stats.name == "render" and stats.inference_stats.success.count >= 1
    assert stats.inference_count >= 3 and stats.execution_count >= 1
    index = gc.get_model_repository_index().models
    assert {(m.name, m.version, m.state) for m in index} >= {("render", "1", "READY")}


@pytest.mark.parametrize("name", ["pixel", "render", "locate"])
def test_raw_and_typed_contents_equal_the_http_answers(gc, live, name) -> None:
    in_name, out_name, make = INPUTS[name]
    x = make().astype(np.float32)
    raw = grpc_infer(gc, name, x).as_numpy(out_name)
    # Typed contents (fp32_contents) instead of raw_input_contents, through the bare stub.
    with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name=name)
        t = req.inputs.add(name=in_name, datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req)
    typed = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(resp.outputs[0].shape)
    body = {
        "inputs": [
            {
                "name": in_name,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": out_name, "parameters": {"binary_data": False}}],
    }
    http = httpx.post(
        f"{live.url}/v2/models/{name}/infer", json=body, timeout=60, verify=TLS
    ).json()
    want = np.asarray(http["outputs"][0]["data"], np.float32).reshape(raw.shape)
    np.testing.assert_allclose(raw, want, atol=1e-6)
    np.testing.assert_allclose(typed, want, atol=1e-6)


def test_streaming_answers_every_request(gc) -> None:
    answers: queue.Queue = queue.Queue()
    gc.start_stream(callback=lambda result, error: answers.put((result, error)))
    coords = data.centres()[:20]
    for i, p in enumerate(coords):
        inp = tgrpc.InferInput("coords", [1, 2], "FP32")
        inp.set_data_from_numpy(p[None].astype(np.float32))
        gc.async_stream_infer("render", [inp], request_id=str(i))
    bad = tgrpc.InferInput("coords", [1, 2], "FP32")
    bad.set_data_from_numpy(np.array([[99, 99]], np.float32))
    gc.async_stream_infer("render", [bad], request_id="bad")
    got = [answers.get(timeout=30) for _ in range(21)]
    gc.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "outside the canvas" in str(errors[0])
    results = {r.get_response().id: r.as_numpy("image") for r, e in got if e is None}
    assert len(results) == 20
    for i, p in enumerate(coords.astype(int)):
        assert results[str(i)][0, p[1], p[0]] > 0.5  # its own square, not a neighbour's


BAD = [
    # (what, input name, datatype, shape, payload, code, message)
    (
        "wrong shape",
        "coords",
        "FP32",
        [1, 3],
        np.zeros((1, 3), np.float32),
        "INVALID_ARGUMENT",
        "expected ['N', 2]",
    ),
    (
        "wrong datatype",
        "coords",
        "INT32",
        [1, 2],
        np.zeros((1, 2), np.int32),
        "INVALID_ARGUMENT",
        "must be FP32",
    ),
    (
        "unknown input",
        "pixels",
        "FP32",
        [1, 2],
        np.zeros((1, 2), np.float32),
        "INVALID_ARGUMENT",
        "unknown input 'pixels'",
    ),
    (
        "off the canvas",
        "coords",
        "FP32",
        [1, 2],
        np.full((1, 2), 70, np.float32),
        "INVALID_ARGUMENT",
        "outside the canvas",
    ),
    (
        "too large a batch",
        "coords",
        "FP32",
        [65, 2],
        np.zeros((65, 2), np.float32),
        "INVALID_ARGUMENT",
        "exceeds max_batch_size 64",
    ),
]


@pytest.mark.parametrize(
    ("what", "name", "dtype", "shape", "x", "code", "message"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_inputs_get_the_right_status(gc, what, name, dtype, shape, x, code, message) -> None:
    inp = tgrpc.InferInput(name, shape, dtype)
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as caught:
        gc.infer("render", [inp])
    assert code in status_of(caught) and message in caught.value.message()


def test_unknown_model_version_empty_and_oversized(gc, live) -> None:
    x = tgrpc.InferInput("coords", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        gc.infer("nope", [x])
    assert "NOT_FOUND" in status_of(caught) and "unknown model 'nope'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        gc.infer("render", [x], model_version="9")
    assert (
        "NOT_FOUND" in status_of(caught) and "version '9' is not served" in caught.value.message()
    )
    with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        empty = pb.ModelInferRequest(model_name="render")
        empty.inputs.add(name="coords", datatype="FP32", shape=[1, 2])
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(empty)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has no data" in rpc.value.details()
        big = pb.ModelInferRequest(model_name="render")
        big.raw_input_contents.append(b"\0" * (live.settings.max_body_bytes + 1))
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(big)
        assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_health_and_reflection(live) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_auth_repository_control_and_metrics(tmp_path) -> None:
    repo = tmp_path / "repo"
    for name in ("render", "locate"):
        shutil.copytree(MODELS / name, repo / name)
    with live_server(
        model_dir=repo, api_key="s3cret", model_control_mode="explicit", load_model=["render"]
    ) as server:
        url = f"127.0.0.1:{server.grpc_port}"
        anonymous = tgrpc.InferenceServerClient(url)
        assert anonymous.is_server_live()  # health needs no key, as on HTTP
        with pytest.raises(InferenceServerException) as caught:
            anonymous.get_model_metadata("render")
        assert "UNAUTHENTICATED" in status_of(caught) and "missing bearer token" in str(
            caught.value
        )
        wrong = partial(anonymous.get_model_metadata, headers={"authorization": "Bearer nope"})
        with pytest.raises(InferenceServerException, match="invalid API key"):
            wrong("render")
        anonymous.close()
        c = tgrpc.InferenceServerClient(url)
        key = {"authorization": "Bearer s3cret"}
        assert not c.is_model_ready("locate", headers=key)
        c.load_model("locate", headers=key)
        assert c.is_model_ready("locate", headers=key)
        c.unload_model("locate", headers=key)
        assert not c.is_model_ready("locate", headers=key)
        (repo / "nothing").mkdir()
        with pytest.raises(InferenceServerException, match="failed to load 'nothing'"):
            c.load_model("nothing", headers=key)
        x = tgrpc.InferInput("coords", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[10, 20]], np.float32))
        c.infer("render", [x], headers=key)
        c.close()
        metrics = httpx.get(server.url + "/metrics", verify=TLS).text
    assert 'protocol="grpc"' in metrics and 'status="UNAUTHENTICATED"' in metrics
    assert 'route="/inference.GRPCInferenceService/ModelInfer"' in metrics


def test_http_and_grpc_clients_share_batches() -> None:
    """16 HTTP and 16 gRPC clients, one item each at once: every answer right, mean batch >= 8."""
    coords = data.centres()[np.random.default_rng(1).choice(3136, 32, replace=False)]
    with live_server(("render",), max_queue_delay_us=100_000) as server:

        async def go() -> tuple[list[np.ndarray], list[np.ndarray]]:
            aio = tgrpc_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            async with httpx.AsyncClient(base_url=server.url, timeout=60, verify=TLS) as h:

                async def via_http(p: np.ndarray) -> np.ndarray:
                    r = await h.post("/v1/render", json={"coords": [p.tolist()], "format": "array"})
                    return np.asarray(r.json()["images"][0], np.float32)

                async def via_grpc(p: np.ndarray) -> np.ndarray:
                    x = tgrpc.InferInput("coords", [1, 2], "FP32")
                    x.set_data_from_numpy(p[None].astype(np.float32))
                    return (await aio.infer("render", [x])).as_numpy("image")[0]

                out = await asyncio.gather(
                    *[via_http(p) for p in coords[:16]], *[via_grpc(p) for p in coords[16:]]
                )
            await aio.close()
            return out[:16], out[16:]

        http, grpc_out = asyncio.run(go())
        stats = httpx.get(server.url + "/v2/models/render/versions/2/stats", verify=TLS).json()[
            "model_stats"
        ][0]
    from training import metrics

    images = np.stack([*http, *grpc_out])
    assert metrics.iou(images, data.squares(coords)).min() >= 0.95
    assert stats["inference_count"] == 32
    assert stats["inference_count"] / stats["execution_count"] >= 8


# Fuzzing: whatever a client sends, the answer is a status with a message, never INTERNAL or
# UNKNOWN, and the server stays up.
DTYPES = st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BYTES", "BOOL", "UINT8", "", "XX"])
tensors: st.SearchStrategy[dict] = st.builds(
    dict,
    name=st.sampled_from(["coords", "image", "", "x" * 300]),
    datatype=DTYPES,
    shape=st.lists(st.integers(-3, 70), max_size=4),
    floats=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=10),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    model=st.sampled_from(["render", "locate", "pixel", "nope", ""]),
    version=st.sampled_from(["", "1", "2", "x"]),
    inputs=st.lists(tensors, max_size=3),
    outputs=st.lists(st.sampled_from(["image", "coords", "heatmap", "zzz"]), max_size=2),
)
def test_fuzzed_model_infer_never_fails_inside(live, model, version, inputs, outputs) -> None:
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    for t in inputs:
        tensor = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if t["raw"] is None:
            tensor.contents.fp32_contents.extend(t["floats"])
        else:
            req.raw_input_contents.append(t["raw"])
    for o in outputs:
        req.outputs.add(name=o)
    with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, details = grpc.StatusCode.OK, ""
        try:
            stub.ModelInfer(req, timeout=30)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, details)
        assert code == grpc.StatusCode.OK or details
        assert stub.ServerLive(pb.ServerLiveRequest()).live
