"""The product API over a real uvicorn with the shipped models: correct answers through every
encoding, headers, models, health, metrics and docs."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.helpers import decode_png_b64, npy_bytes, png_b64, png_bytes
from training import data, metrics


@pytest.fixture(scope="module")
def quadrant_centres() -> np.ndarray:
    return data.centres()[data.split_indices("quadrant")[1]]


def test_render_every_held_out_centre_through_png_array_and_npy(client, quadrant_centres) -> None:
    coords = quadrant_centres.tolist()
    truth = data.squares(quadrant_centres)
    png = client.post("/v1/render", json={"coords": coords})
    assert png.status_code == 200, png.text
    body = png.json()
    assert body["model"] == "render" and body["version"] == "2"
    png_images = np.stack([decode_png_b64(s) for s in body["images"]])
    arr = client.post("/v1/render", json={"coords": coords, "format": "array"})
    arr_images = np.asarray(arr.json()["images"], dtype=np.float32)
    npy = client.post(
        "/v1/render", json={"coords": coords}, headers={"Accept": "application/x-npy"}
    )
    assert npy.headers["content-type"] == "application/x-npy"
    npy_images = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert npy_images.shape == (729, 64, 64) and npy_images.dtype == np.float32
    for images in (png_images, arr_images, npy_images):
        assert metrics.mean_iou(images, truth) >= 0.99
    np.testing.assert_allclose(arr_images, npy_images, atol=1e-6)
    np.testing.assert_allclose(png_images, npy_images, atol=0.5 / 255 + 1e-6)


def test_pixel_heatmap_png_is_scaled_to_its_maximum(client) -> None:
    png = client.post("/v1/render", json={"coords": [[10, 20]], "model": "pixel"}).json()
    img = decode_png_b64(png["images"][0])
    assert img.max() == 1.0 and img[20, 10] == 1.0
    raw = client.post(
        "/v1/render", json={"coords": [[10, 20]], "model": "pixel", "format": "array"}
    ).json()
    heat = np.asarray(raw["images"][0])
    assert heat.sum() == pytest.approx(1.0, abs=1e-4)  # raw probabilities
    assert np.unravel_index(heat.argmax(), heat.shape) == (20, 10)


@pytest.mark.parametrize("kind", ["squares", "onehots"])
def test_locate_through_every_encoding(client, kind) -> None:
    rng = np.random.default_rng(1)
    c = data.centres()[rng.choice(3136, 48, replace=False)]
    images = getattr(data, kind)(c)
    answers = {
        "base64": client.post("/v1/locate", json={"images": [png_b64(i) for i in images]}),
        "data-url": client.post(
            "/v1/locate",
            json={"images": ["data:image/png;base64," + png_b64(i) for i in images]},
        ),
        "array": client.post("/v1/locate", json={"images": images.tolist()}),
        "multipart": client.post(
            "/v1/locate",
            files=[
                ("images", (f"{i}.png", png_bytes(img), "image/png"))
                for i, img in enumerate(images)
            ],
        ),
        "npy": client.post(
            "/v1/locate?model=locate",
            content=npy_bytes(images),
            headers={"Content-Type": "application/x-npy"},
        ),
        "npy64": client.post(
            "/v1/locate",
            content=npy_bytes(images.astype(np.float64)),
            headers={"Content-Type": "application/x-npy"},
        ),
    }
    for how, r in answers.items():
        assert r.status_code == 200, (how, r.text)
        got = np.asarray(r.json()["coords"])
        assert got.shape == (48, 2), how
        assert metrics.mean_error_px(got, c) <= 0.5, how


@pytest.mark.parametrize("mode", ["I;16", "RGB", "RGBA"])
def test_locate_accepts_16_bit_colour_and_alpha_pngs(client, mode) -> None:
    c = np.array([[12.0, 40.0]])
    r = client.post("/v1/locate", json={"images": [png_b64(data.squares(c)[0], mode)]})
    assert r.status_code == 200, r.text
    assert metrics.mean_error_px(r.json()["coords"], c) <= 0.5


def test_inference_responses_carry_model_and_request_headers(client, server) -> None:
    r = client.post("/v1/render", json={"coords": [[5, 5]]}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.headers["x-model-name"] == "render" and r.headers["x-model-version"] == "2"
    import hashlib

    sha = hashlib.sha256((server.settings.model_dir / "render/2/model.onnx").read_bytes())
    assert r.headers["x-model-sha256"] == sha.hexdigest()
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert first != second and len(first) >= 16  # generated when the client sent none
    bad = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"  # not echoed: not a safe token


def test_models_lists_every_shipped_model(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) >= {"pixel", "render", "locate"}
    loc = models["locate"]
    assert loc["task"] == "locate" and loc["provider"] == "CPUExecutionProvider"
    assert loc["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64, 64]}]
    assert loc["version"] == "2"  # the last listed: versions ascend
    assert loc["outputs"] == [
        {"name": "coords", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
    ]
    assert loc["metrics"]["mean_error_px"] <= 0.5
    assert len(loc["sha256"]) == 64


def test_health_ready_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/v1/render", json={"coords": [[30, 30]]})
    text = client.get("/metrics").text
    for name in (
        "coordconv_requests_total",
        "coordconv_request_duration_seconds_bucket",
        "coordconv_inference_count_total",
        "coordconv_execution_count_total",
        "coordconv_batch_size_bucket",
        "coordconv_queue_duration_seconds_bucket",
        "coordconv_compute_duration_seconds_bucket",
        "coordconv_queue_items",
    ):
        assert name in text
    assert (
        'coordconv_requests_total{model="render",protocol="http",route="/v1/render",'
        'status="200",version="2"}' in text
    )


def test_docs_work_offline(client) -> None:
    html = client.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    spec = client.get("/openapi.json").json()
    render = spec["paths"]["/v1/render"]["post"]
    example = render["requestBody"]["content"]["application/json"]["schema"]["examples"][0]
    assert example["coords"] == [[10, 20], [40.5, 33]]
    assert "multipart/form-data" in spec["paths"]["/v1/locate"]["post"]["requestBody"]["content"]
