"""The Open Inference Protocol, spoken by the real `tritonclient.http`."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from training import data

INPUTS = {
    "pixel": ("coords", lambda: data.centres()[::97]),
    "render": ("coords", lambda: data.centres()[::97]),
    "locate": ("image", lambda: data.squares(data.centres()[::97])),
}
OUTPUTS = {"pixel": "heatmap", "render": "image", "locate": "coords"}


@pytest.fixture
def tc(server):
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60)
    yield c
    c.close()


def v1_answer(client, name: str, x: np.ndarray) -> np.ndarray:
    if name == "locate":
        r = client.post("/v1/locate", json={"images": x.tolist(), "model": name})
        return np.asarray(r.json()["coords"], np.float32)
    r = client.post("/v1/render", json={"coords": x.tolist(), "model": name, "format": "array"})
    return np.asarray(r.json()["images"], np.float32)


def test_server_and_model_readiness_and_metadata(tc) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    for name in ("pixel", "render", "locate"):
        assert tc.is_model_ready(name)
        assert tc.is_model_ready(name, "1")
        m = tc.get_model_metadata(name)
        assert m["inputs"][0]["name"] == INPUTS[name][0]
        assert m["outputs"][0]["name"] == OUTPUTS[name]
        assert m["inputs"][0]["datatype"] == "FP32"
        cfg = tc.get_model_config(name)
        assert cfg["name"] == name and cfg["max_batch_size"] == 64
    assert tc.get_model_metadata("render", "1")["versions"] == ["1"]


@pytest.mark.parametrize("name", ["pixel", "render", "locate"])
@pytest.mark.parametrize("binary_in", [False, True])
def test_infer_json_and_binary_tensors_equal_v1(tc, client, name, binary_in) -> None:
    in_name, make = INPUTS[name]
    x = make().astype(np.float32)
    inp = triton.InferInput(in_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    # JSON outputs must be asked for by name with binary_data=False.
    out = triton.InferRequestedOutput(OUTPUTS[name], binary_data=False)
    as_json = tc.infer(name, [inp], outputs=[out]).as_numpy(OUTPUTS[name])
    # No named outputs: binary outputs.
    result = tc.infer(name, [inp])
    as_binary = result.as_numpy(OUTPUTS[name])
    assert result.get_output(OUTPUTS[name])["parameters"]["binary_data_size"] > 0
    want = v1_answer(client, name, x)
    np.testing.assert_allclose(as_json, want, atol=1e-6)
    np.testing.assert_allclose(as_binary, want, atol=1e-6)


def test_unknown_model_is_a_404_with_an_error_body(tc, client) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        tc.get_model_metadata("nope")
    r = client.post("/v2/models/nope/infer", content=b"{}")
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    r = client.get("/v2/models/render/versions/7")
    assert r.status_code == 404 and "version '7' is not served" in r.json()["error"]


SHORT_BINARY = (
    b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": 8}}]}'
)
V2_BAD = [
    (b"{", {}, 400, "malformed JSON"),
    (b'{"inputs": []}', {}, 400, "non-empty list"),
    (
        b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}',
        {},
        400,
        "unknown input 'x'",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}',
        {},
        400,
        "must be FP32",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
        {},
        400,
        "expected ['N', 2]",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [2, 2], "datatype": "FP32", "data": [1, 2]}]}',
        {},
        400,
        "2 values for shape [2, 2]",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [99, 2]}]}',
        {},
        400,
        "outside the canvas",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [65, 2], "datatype": "FP32", "data": []}]}',
        {},
        400,
        "batch size 65 exceeds max_batch_size 64",
    ),
    (
        SHORT_BINARY + b"\x00" * 4,
        {"Inference-Header-Content-Length": str(len(SHORT_BINARY))},
        400,
        "but 4 bytes follow",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], '
        b'"outputs": [{"name": "nope"}]}',
        {},
        400,
        "unknown output 'nope'",
    ),
    (b"{}", {"Inference-Header-Content-Length": "999"}, 400, "not a length within the body"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"), V2_BAD)
def test_bad_v2_requests_get_error_bodies(client, body, headers, status, message) -> None:
    r = client.post("/v2/models/render/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_infer_needs_no_content_type_and_accepts_nested_data(client) -> None:
    body = (
        b'{"inputs": [{"name": "coords", "shape": [2, 2], "datatype": "FP32", '
        b'"data": [[10, 20], [30, 40]]}], "outputs": [{"name": "image", '
        b'"parameters": {"binary_data": false}}]}'
    )
    r = client.post("/v2/models/render/versions/1/infer", content=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 64, 64] and len(out["data"]) == 2 * 64 * 64
    img = np.asarray(out["data"]).reshape(2, 64, 64)
    assert img[0, 20, 10] > 0.5 and img[1, 40, 30] > 0.5


NEVER_500 = [
    # (body, headers, message)
    (
        b"{}",
        {"Inference-Header-Content-Length": "\u00b2".encode()},
        "is not a length in bytes",
    ),
    (b"{}", {"Inference-Header-Content-Length": "9" * 5000}, "is not a length in bytes"),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], '
        b'"parameters": {"binary_data_output": "false"}}',
        {},
        "binary_data_output must be true or false (a JSON boolean), got 'false'",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", '
        b'"data": ["10", "20"]}]}',
        {},
        "data must be numbers (flat or nested), not strings or booleans",
    ),
    (
        b'{"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", '
        b'"data": [true, false]}]}',
        {},
        "not strings or booleans",
    ),
]


@pytest.mark.parametrize(("body", "headers", "message"), NEVER_500)
def test_odd_v2_requests_are_400_never_500(client, body, headers, message) -> None:
    r = client.post("/v2/models/render/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_a_png_sent_as_npy_and_a_truncated_multipart_say_so(client) -> None:
    from tests.helpers import png_bytes

    png = png_bytes(data.squares([[10, 10]])[0])
    r = client.post("/v1/locate", content=png, headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 400 and "it looks like a PNG" in r.json()["detail"]
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png[:40]
    )
    r = client.post(
        "/v1/locate", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    assert r.status_code == 400 and "truncated multipart body" in r.json()["detail"]
