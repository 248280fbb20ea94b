"""Ensembles (`platform: "ensemble"`, Triton's `ensemble_scheduling`) through the real
`tritonclient.http` and `tritonclient.grpc`: the shipped `roundtrip` (render the points, locate
them again) answering the image, the located coordinates and the confidence in one request, each
step through its own model's batcher and statistics and the ensemble counted too; a step model
unloaded (503 naming it, not ready, UNAVAILABLE in the index) and loaded again; loading an
ensemble loads its steps; configs with unknown models or mismatched tensors refused with one
line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests.helpers import MODELS, TLS, live_server, wait_for

POINTS = np.array([[10, 20], [40.4, 33.6], [4, 59], [63, 0]], np.float32)


def session(name: str, version: str = "2") -> ort.InferenceSession:
    path = MODELS / name / version / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def expected(points: np.ndarray) -> dict[str, np.ndarray]:
    """What the pipeline computes, step by step, with onnxruntime alone."""
    image = session("render").run(None, {"coords": points})[0]
    located, confidence = session("locate").run(None, {"image": image})
    return {"image": image, "located": located, "confidence": confidence}


@pytest.fixture(scope="module")
def live():
    with live_server() as server:  # the shipped repository, roundtrip included
        yield server


def stats_of(tc: Any, name: str, version: str) -> dict[str, Any]:
    entry: dict[str, Any] = tc.get_inference_statistics(name, version)["model_stats"][0]
    return entry


def test_the_shipped_config_is_tritons_and_its_version_folder_exists() -> None:
    config = text_format.Parse(
        (MODELS / "roundtrip" / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert config.name == "roundtrip" and config.platform == "ensemble"
    assert (MODELS / "roundtrip" / "1").is_dir()
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["render", "locate"]
    assert dict(steps[1].output_map) == {"coords": "located", "confidence": "confidence"}
    for s in steps:  # an ensemble batches no more than its steps
        step = text_format.Parse(
            (MODELS / s.model_name / "config.pbtxt").read_text(), mc.ModelConfig()
        )
        assert config.max_batch_size <= step.max_batch_size


def test_roundtrip_over_http_and_grpc(live) -> None:
    tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
    gc = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
    want = expected(POINTS)
    before = {n: stats_of(tc, n, "2") for n in ("render", "locate")}
    before["roundtrip"] = stats_of(tc, "roundtrip", "1")

    x = triton.InferInput("coords", list(POINTS.shape), "FP32")
    x.set_data_from_numpy(POINTS)
    http = tc.infer("roundtrip", [x])
    gx = tgrpc.InferInput("coords", list(POINTS.shape), "FP32")
    gx.set_data_from_numpy(POINTS)
    via_grpc = gc.infer("roundtrip", [gx])
    for result in (http, via_grpc):
        for name, value in want.items():
            np.testing.assert_allclose(result.as_numpy(name), value, atol=1e-5)
    located = http.as_numpy("located")
    # render version 2 draws the square at the nearest integer centre; locate finds it again.
    assert np.abs(located - np.rint(POINTS)).max() <= 0.5
    assert http.as_numpy("confidence").min() >= 0.5
    assert http.get_response()["model_name"] == "roundtrip"
    assert http.get_response()["model_version"] == "1"

    # Each step ran through its model, counted there; the ensemble has its own statistics.
    after = {n: stats_of(tc, n, "2") for n in ("render", "locate")}
    after["roundtrip"] = stats_of(tc, "roundtrip", "1")
    for name in after:
        done = after[name]["inference_stats"]["success"]["count"]
        assert done - before[name]["inference_stats"]["success"]["count"] == 2, name
        assert after[name]["inference_count"] - before[name]["inference_count"] == 8, name
    assert after["roundtrip"]["execution_count"] - before["roundtrip"]["execution_count"] == 2
    grpc_stats = gc.get_inference_statistics("roundtrip").model_stats[0]
    assert grpc_stats.name == "roundtrip" and grpc_stats.inference_stats.success.count >= 2

    # Some outputs only.
    only = tc.infer("roundtrip", [x], outputs=[triton.InferRequestedOutput("located")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["located"]

    meta = tc.get_model_metadata("roundtrip")
    assert meta["platform"] == "ensemble" and meta["versions"] == ["1"]
    assert [o["name"] for o in meta["outputs"]] == ["image", "located", "confidence"]
    assert gc.get_model_metadata("roundtrip").platform == "ensemble"
    config = tc.get_model_config("roundtrip")
    assert config["ensemble_scheduling"]["step"][0]["model_name"] == "render"
    assert "dynamic_batching" not in config and "instance_group" not in config
    assert gc.get_model_config("roundtrip").config.ensemble_scheduling.step[1].model_name == (
        "locate"
    )
    assert tc.is_model_ready("roundtrip") and gc.is_model_ready("roundtrip")
    index = {(e["name"], e["version"]): e["state"] for e in tc.get_model_repository_index()}
    assert index[("roundtrip", "1")] == "READY"
    listed = {m["name"]: m for m in httpx.get(live.url + "/v1/models", verify=TLS).json()["models"]}
    assert listed["roundtrip"]["task"] == "ensemble"
    assert listed["roundtrip"]["provider"] == listed["render"]["provider"]
    tc.close()
    gc.close()


def test_ensemble_requests_are_checked_like_any_other(live) -> None:
    with httpx.Client(base_url=live.url, verify=TLS) as c:
        r = c.post("/v1/render", json={"coords": [[1, 2]], "model": "roundtrip"})
        assert r.status_code == 400 and "does 'ensemble'" in r.json()["detail"]

        def v2(inputs: list[dict[str, Any]]) -> httpx.Response:
            return c.post("/v2/models/roundtrip/infer", json={"inputs": inputs})

        coords = {"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [70, 1]}
        r = v2([coords])  # the render step's rule: pixels in [0, 63]
        assert r.status_code == 400 and "coords" in r.json()["error"]
        r = v2([{**coords, "name": "points", "data": [1, 1]}])
        assert r.status_code == 400
        assert r.json()["error"] == "unknown input 'points'; model 'roundtrip' takes 'coords'"
        r = v2([{**coords, "shape": [65, 2], "data": [1] * 130}])
        assert r.status_code == 400 and "exceeds max_batch_size 64" in r.json()["error"]


# Model control


def repo_with(root: Path, *names: str) -> Path:
    repo = root / "models"
    for name in names:
        shutil.copytree(MODELS / name, repo / name)
    return repo


def test_loading_an_ensemble_loads_its_steps_and_a_missing_step_is_a_503(tmp_path) -> None:
    repo = repo_with(tmp_path, "render", "locate", "roundtrip")
    with live_server(
        model_dir=repo, model_control_mode="explicit", load_model=["roundtrip"]
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        gc = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        assert tc.is_server_ready()
        assert all(tc.is_model_ready(n) for n in ("render", "locate", "roundtrip"))

        tc.unload_model("locate")  # allowed (as in Triton); the ensemble stays, unavailable
        assert not tc.is_model_ready("roundtrip") and not gc.is_model_ready("roundtrip")
        entry = next(e for e in tc.get_model_repository_index() if e["name"] == "roundtrip")
        assert entry["state"] == "UNAVAILABLE" and "step 1 (locate)" in entry["reason"]
        body = {"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [9, 9]}]}
        r = httpx.post(live.url + "/v2/models/roundtrip/infer", json=body, verify=TLS)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == (
            "ensemble 'roundtrip': step 1 (locate) is not available: unknown model 'locate'; "
            "loaded models: render, roundtrip"
        )
        gx = tgrpc.InferInput("coords", [1, 2], "FP32")
        gx.set_data_from_numpy(np.array([[9, 9]], np.float32))
        with pytest.raises(InferenceServerException) as caught:
            gc.infer("roundtrip", [gx])
        assert str(caught.value.status()) == str(grpc.StatusCode.UNAVAILABLE)
        assert "step 1 (locate) is not available" in str(caught.value.message())

        tc.load_model("locate")
        assert tc.is_model_ready("roundtrip")
        np.testing.assert_allclose(
            gc.infer("roundtrip", [gx]).as_numpy("located"),
            expected(np.array([[9, 9]], np.float32))["located"],
            atol=1e-5,
        )
        tc.unload_model("locate")
        tc.load_model("roundtrip")  # a load of the ensemble loads the missing step again
        assert tc.is_model_ready("locate") and tc.is_model_ready("roundtrip")
        tc.unload_model("roundtrip")  # its steps stay
        assert tc.is_model_ready("render") and tc.is_model_ready("locate")
        assert not tc.is_model_ready("roundtrip")
        tc.close()
        gc.close()


def test_each_step_uses_its_models_response_cache(tmp_path) -> None:
    repo = repo_with(tmp_path, "render", "locate", "roundtrip")
    with live_server(model_dir=repo, cache_size_bytes=16 << 20) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
        x = triton.InferInput("coords", [2, 2], "FP32")
        x.set_data_from_numpy(np.array([[20, 30], [20.2, 29.9]], np.float32))  # one centre
        first = tc.infer("roundtrip", [x]).as_numpy("located")
        again = tc.infer("roundtrip", [x]).as_numpy("located")
        np.testing.assert_array_equal(first, again)
        hits = stats_of(tc, "render", "2")["inference_stats"]["cache_hit"]["count"]
        assert hits == 3  # the second point of the first request, both of the second
        tc.close()


def ensemble(
    steps: list[tuple[str, dict[str, str], dict[str, str]]],
    inputs: tuple[tuple[str, str, str], ...] = (("coords", "TYPE_FP32", "2"),),
    outputs: tuple[tuple[str, str, str], ...] = (("image", "TYPE_FP32", "64, 64"),),
    max_batch_size: int = 64,
    name: str = "pipe",
) -> str:
    def tensors(entries: tuple[tuple[str, str, str], ...]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in entries)

    def mapping(kind: str, m: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in m.items())

    body = ", ".join(
        f'{{ model_name: "{model}" model_version: -1 {mapping("input_map", i)} '
        f"{mapping('output_map', o)} }}"
        for model, i, o in steps
    )
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {tensors(inputs)} ]\noutput [ {tensors(outputs)} ]\n"
        f"ensemble_scheduling {{ step [ {body} ] }}\n"
    )


RENDER = ("render", {"coords": "coords"}, {"image": "image"})
BAD = {
    "unknown-model": (
        ensemble([("nope", {"coords": "coords"}, {"image": "image"})]),
        "model pipe: step model 'nope' cannot be loaded: model 'nope' is not in the model "
        "repository",
    ),
    "unknown-input-name": (
        ensemble([("render", {"coordz": "coords"}, {"image": "image"})]),
        "model pipe: step 0 (render): input_map names ['coordz'], which model 'render' does "
        "not take (its inputs: ['coords'])",
    ),
    "unknown-output-name": (
        ensemble([("render", {"coords": "coords"}, {"mask": "image"})]),
        "model pipe: step 0 (render): output_map names ['mask'], which model 'render' does not "
        "have (its outputs: ['image'])",
    ),
    "input-shape": (
        ensemble([RENDER], inputs=(("coords", "TYPE_FP32", "3"),)),
        "model pipe: step 0 (render): tensor 'coords' is FP32 [3] but model 'render' input "
        "'coords' takes FP32 [2]",
    ),
    "output-shape": (
        ensemble([RENDER], outputs=(("image", "TYPE_FP32", "32, 32"),)),
        "model pipe: step 0 (render): model 'render' output 'image' is FP32 [64, 64] but the "
        "ensemble's tensor 'image' is FP32 [32, 32]",
    ),
    "between-steps": (
        ensemble(
            [RENDER, ("render", {"coords": "image"}, {"image": "again"})],
            outputs=(("again", "TYPE_FP32", "64, 64"),),
        ),
        "model pipe: step 1 (render): tensor 'image' is FP32 [64, 64] but model 'render' input "
        "'coords' takes FP32 [2]",
    ),
    "dtype": (
        ensemble([RENDER], inputs=(("coords", "TYPE_FP16", "2"),)),
        "model pipe: tensor 'coords' is TYPE_FP16; only TYPE_FP32 is served",
    ),
    "never-written": (
        ensemble([RENDER], outputs=(("image", "TYPE_FP32", "64, 64"), ("xy", "TYPE_FP32", "2"))),
        "model pipe: no step writes the ensemble output(s) ['xy']",
    ),
    "never-read": (
        ensemble([RENDER], inputs=(("coords", "TYPE_FP32", "2"), ("extra", "TYPE_FP32", "2"))),
        "model pipe: no step reads the ensemble input(s) ['extra']",
    ),
    "nothing-writes": (
        ensemble([("locate", {"image": "picture"}, {"coords": "image"})]),
        "model pipe: step 0 (locate) reads tensor 'picture', which neither an ensemble input "
        "nor any step provides",
    ),
    "written-twice": (
        ensemble([RENDER, RENDER]),
        "model pipe: tensor 'image' is written by both step 0 (render) and step 1 (render)",
    ),
    "cycle": (
        ensemble(
            [
                ("render", {"coords": "b"}, {"image": "a"}),
                ("locate", {"image": "a"}, {"coords": "b"}),
                RENDER,
            ]
        ),
        "model pipe: the steps [0, 1] wait on each other (a cycle)",
    ),
    "itself": (
        ensemble([("pipe", {"coords": "coords"}, {"image": "image"})]),
        "model pipe: step 0: the ensemble cannot be a step of itself",
    ),
    "nested": (
        ensemble([("roundtrip", {"coords": "coords"}, {"image": "image"})]),
        "model pipe: step model 'roundtrip' is an ensemble; ensembles do not nest",
    ),
    "batch-too-large": (
        ensemble([RENDER], max_batch_size=128),
        "model pipe: step 0 (render): the ensemble's max_batch_size 128 exceeds model "
        "'render''s 64",
    ),
    "no-steps": (
        'name: "pipe"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "coords" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "image" data_type: TYPE_FP32 dims: [ 64, 64 ] } ]\n',
        "model pipe: platform 'ensemble' needs ensemble_scheduling with steps",
    ),
    "no-version-folder": (ensemble([RENDER]), "model pipe: no version to serve"),
}


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    repo = repo_with(tmp_path_factory.mktemp("ensembles"), "render", "locate", "roundtrip")
    with live_server(
        model_dir=repo, model_control_mode="explicit", load_model=["render"], grpc_port=0
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        yield repo, tc
        tc.close()


@pytest.mark.parametrize("fault", sorted(BAD))
def test_a_bad_ensemble_is_refused_with_one_line(explicit, fault) -> None:
    repo, tc = explicit
    text, message = BAD[fault]
    folder = repo / "pipe"
    shutil.rmtree(folder, ignore_errors=True)
    (folder if fault == "no-version-folder" else folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(text)
    with pytest.raises(InferenceServerException) as caught:
        tc.load_model("pipe")
    error = str(caught.value.message())
    assert error == f"failed to load 'pipe': {message}" or message in error, error
    assert "\n" not in error.strip() and str(repo) not in error
    assert not tc.is_model_ready("pipe") and not tc.is_model_ready("roundtrip")
    assert tc.is_model_ready("render")  # the serving set stays: steps it loaded are unloaded
    ready = {e["name"] for e in tc.get_model_repository_index() if e["state"] == "READY"}
    assert ready == {"render"}


def test_a_good_ensemble_loads_beside_them(explicit) -> None:
    repo, tc = explicit
    folder = repo / "pipe"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(ensemble([RENDER], max_batch_size=8))
    tc.load_model("pipe")
    x = triton.InferInput("coords", [2, 2], "FP32")
    x.set_data_from_numpy(POINTS[:2])
    got = tc.infer("pipe", [x]).as_numpy("image")
    np.testing.assert_allclose(got, expected(POINTS[:2])["image"], atol=1e-5)
    tc.unload_model("pipe")


def test_poll_mode_serves_an_ensemble_and_follows_its_folder(tmp_path) -> None:
    repo = repo_with(tmp_path, "render", "locate", "roundtrip")
    with live_server(model_dir=repo, model_control_mode="poll", repository_poll_secs=0.2) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
        time.sleep(1.0)  # several polls: an ensemble's folder holds no model file, and stays
        assert tc.is_model_ready("roundtrip")
        moved = tmp_path / "roundtrip"
        (repo / "roundtrip").rename(moved)
        wait_for(lambda: not tc.is_model_ready("roundtrip"))
        moved.rename(repo / "roundtrip")
        wait_for(lambda: tc.is_model_ready("roundtrip"))
        tc.close()
