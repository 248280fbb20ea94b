"""The full-canvas models (version 2 of render, locate, pixel) and the locate confidence, as the
repository ships them: judged with onnxruntime on the files (what Triton would serve), and
through the service beside version 1."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.helpers import MODELS, ROOT
from training import data, evaluate, metrics

V2 = {name: MODELS / name / "2" / "model.onnx" for name in ("render", "locate", "pixel")}


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(V2[name]), providers=["CPUExecutionProvider"])


def test_render_v2_draws_every_centre_and_real_points() -> None:
    r = evaluate.evaluate_render(V2["render"])
    assert r["min_iou_centres"] >= 0.99, r
    assert r["min_iou_real"] >= 0.99, r
    # dark around the square (what IoU at 0.5 cannot see), with the goal's bounds
    assert r["value_problem"] is None, r


def test_pixel_v2_classifies_every_centre() -> None:
    r = evaluate.evaluate_pixel(V2["pixel"])
    assert r["accuracy_centres"] == 1.0, r


@pytest.fixture(scope="module")
def locate_report() -> dict:
    # The confidence's cost timed briefly: the ratio is checked loosely here, measured in the bench.
    return evaluate.evaluate_locate(V2["locate"], cost_seconds=0.5)


def test_locate_v2_is_exact_over_the_whole_canvas(locate_report) -> None:
    e = locate_report["error"]
    assert e["squares_mean_px"] <= 0.5 and e["squares_max_px"] <= 1.0, e
    assert e["onehots_mean_px"] <= 0.5 and e["onehots_max_px"] <= 1.0, e


def test_the_confidence_tells_clean_from_corrupted(locate_report) -> None:
    for name, s in locate_report["sets"].items():
        if s["kind"] == "clean":
            assert s["ok"] >= 0.99, (name, s)
        else:
            assert s["ok"] <= 0.01, (name, s)
            assert s["auroc"] >= 0.99, (name, s)
    assert locate_report["confidence_cost"]["ratio"] >= 0.5  # the bench states the real figure


def test_the_confidence_is_part_of_the_graph() -> None:
    s = session("locate")
    assert [o.name for o in s.get_outputs()] == ["coords", "confidence"]
    images = np.concatenate([data.squares([[0, 0], [63, 63]]), np.zeros((1, 64, 64), np.float32)])
    coords, conf = s.run(None, {"image": images})
    np.testing.assert_allclose(coords[:2], [[0, 0], [63, 63]], atol=0.5)  # clipped corners
    assert conf[0] > 0.99 and conf[1] > 0.99 and conf[2] < 0.1
    assert conf.shape == (3,)


def test_versions_answer_side_by_side(client) -> None:
    image = data.squares([[10, 20]])[0].tolist()
    blank = np.zeros((64, 64)).tolist()
    v2 = client.post("/v1/locate", json={"images": [image, blank]}).json()
    assert v2["version"] == "2"
    assert v2["ok"] == [True, False]
    assert v2["confidence"][0] > 0.9 and v2["confidence"][1] < 0.1
    np.testing.assert_allclose(v2["coords"][0], [10, 20], atol=0.5)
    # Version 1 (the quadrant model) answers beside it, with the same confidence head.
    v1 = client.post("/v1/locate", json={"images": [image], "version": "1"}).json()
    assert v1["version"] == "1" and v1["ok"] == [True]
    np.testing.assert_allclose(v1["coords"][0], [10, 20], atol=0.5)
    far = data.squares([[1, 62]])[0].tolist()  # a clipped corner square v1 never saw
    v1_corner = client.post("/v1/locate", json={"images": [far], "version": "1"}).json()
    v2_corner = client.post("/v1/locate", json={"images": [far]}).json()
    np.testing.assert_allclose(v2_corner["coords"][0], [1, 62], atol=0.01)
    assert v2_corner["ok"] == [True]
    if not np.allclose(v1_corner["coords"][0], [1, 62], atol=0.5):  # v1 is off, and says so
        assert v1_corner["ok"] == [False]
    corner = client.post(
        "/v1/render", json={"coords": [[0, 0]], "format": "array", "version": 2}
    ).json()
    assert metrics.iou(np.asarray(corner["images"], np.float32), data.squares([[0, 0]]))[0] >= 0.99


def test_v2_protocol_returns_the_confidence_tensor(server) -> None:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = triton.InferInput("image", [2, 64, 64], "FP32")
    x.set_data_from_numpy(np.concatenate([data.onehots([[5, 60]]), np.ones((1, 64, 64), "f4")]))
    result = c.infer("locate", [x], model_version="2")
    conf = result.as_numpy("confidence")
    assert conf.shape == (2,) and conf[0] > 0.99 and conf[1] < 0.1
    meta = c.get_model_metadata("locate", "2")
    assert [o["name"] for o in meta["outputs"]] == ["coords", "confidence"]
    c.close()


def test_the_client_writes_the_confidence_and_fails_doubtful_items(server, tmp_path) -> None:
    images = np.concatenate([data.squares([[10, 10], [30, 40]]), np.zeros((1, 64, 64), "f4")])
    npy = tmp_path / "images.npy"
    np.save(npy, images)
    out = tmp_path / "coords.csv"
    cmd = [
        sys.executable,
        "-m",
        "coordconv",
        "client",
        "locate",
        "--input",
        str(npy),
        "--output",
        str(out),
        "--url",
        server.url,
        "--quiet",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["ok"] for r in rows] == ["true", "true", "false"]
    assert float(rows[0]["confidence"]) > 0.9 and float(rows[2]["confidence"]) < 0.1
    strict = subprocess.run(
        # another job over the finished output (a different threshold): asked to replace it
        [*cmd[:-1], "--min-confidence", "0.5", "--overwrite", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert strict.returncode == 1, strict.stderr
    with open(str(out) + ".failed.csv") as f:
        failed = list(csv.DictReader(f))
    assert [r["name"] for r in failed] == ["2"] and "confidence" in failed[0]["reason"]
    with open(out) as f:  # every item still written, the doubtful one marked
        marked = [r["below_min_confidence"] for r in csv.DictReader(f)]
    assert marked == ["false", "false", "true"]
