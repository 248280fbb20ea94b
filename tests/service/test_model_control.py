"""Model control that cannot take the server down, through the public API (tritonclient where it
applies): configs outside the LIMIT_* bounds refused before anything is allocated, Triton's
meaning of max_batch_size 0 and KIND_GPU, repository files that are not regular files, version
folders that are not numbers or lead out of the repository, overrides that apply to their own
call only, concurrent control calls applied in order, and no server path in any answer."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import MODELS, TLS, LiveServer, live_server

COORDS = np.array([[10, 20], [40.5, 33]], np.float32)


def repo_with(tmp_path: Path, *names: str) -> Path:
    repo = tmp_path / "models"
    for name in names:
        shutil.copytree(MODELS / name, repo / name)
    return repo


@pytest.fixture
def explicit(tmp_path: Path) -> Iterator[tuple[LiveServer, Path, triton.InferenceServerClient]]:
    repo = repo_with(tmp_path, "render", "locate")
    with live_server(
        model_dir=repo, model_control_mode="explicit", load_model=["render"], grpc_port=0
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        yield live, repo, tc
        tc.close()


def config_json(tc: triton.InferenceServerClient, name: str, **changes: Any) -> str:
    config = tc.get_model_config(name)
    for key, value in changes.items():
        config[key] = value
    return json.dumps(config)


def load_error(tc: triton.InferenceServerClient, name: str, config: str | None = None) -> str:
    with pytest.raises(InferenceServerException) as caught:
        tc.load_model(name, config=config)
    return str(caught.value.message())


def served(tc: triton.InferenceServerClient, name: str) -> list[str]:
    return sorted(
        e["version"] for e in tc.get_model_repository_index() if e["name"] == name and e["version"]
    )


def render(tc: triton.InferenceServerClient, version: str = "") -> tuple[np.ndarray, str]:
    x = triton.InferInput("coords", list(COORDS.shape), "FP32")
    x.set_data_from_numpy(COORDS)
    result = tc.infer("render", [x], model_version=version)
    return result.as_numpy("image"), result.get_response()["model_version"]


def reference(version: str) -> np.ndarray:
    s = ort.InferenceSession(str(MODELS / "render" / version / "model.onnx"))
    return s.run(None, {"coords": COORDS})[0]


# 1. Bounds


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_batch_size": 1024}, "max_batch_size 1024 exceeds the limit 256 (LIMIT_BATCH_SIZE)"),
        (
            {"max_batch_size": 2**31 - 1},
            f"max_batch_size {2**31 - 1} exceeds the limit 256 (LIMIT_BATCH_SIZE)",
        ),
        (
            {"dynamic_batching": {"max_queue_delay_microseconds": 2**64 - 1}},
            f"dynamic_batching.max_queue_delay_microseconds {2**64 - 1} exceeds the limit "
            "10000000 (LIMIT_QUEUE_DELAY_US)",
        ),
        (
            {"instance_group": [{"count": 100, "kind": "KIND_CPU"}]},
            "instance_group count 100 exceeds the limit 8 (LIMIT_INSTANCES)",
        ),
        (
            {"instance_group": [{"count": 1, "kind": "KIND_GPU"}]},
            "instance_group asks for KIND_GPU but no GPU is in use",
        ),
        (
            {"max_batch_size": 0, "dynamic_batching": None},
            "with max_batch_size 0 (no batching) the dims are the whole shape and must start "
            "with the batch axis, -1",
        ),
    ],
    ids=["batch-1024", "batch-2^31", "delay-2^64", "instances-100", "kind-gpu", "mbs0-dims"],
)
def test_a_config_outside_the_bounds_is_refused_and_changes_nothing(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
    changes: dict[str, Any],
    message: str,
) -> None:
    _, _, tc = explicit
    config = json.loads(config_json(tc, "render"))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    started = time.monotonic()
    error = load_error(tc, "render", json.dumps(config))
    assert message in error and "\n" not in error
    assert time.monotonic() - started < 5  # refused before any warm-up
    # The serving set is as it was, and a later plain load is not blamed for the refused one.
    assert served(tc, "render") == ["1", "2"]
    tc.load_model("render")
    image, version = render(tc)
    assert version == "2"
    np.testing.assert_allclose(image, reference("2"), atol=1e-5)


def test_too_many_versions_are_refused(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "render")
    for v in range(3, 6):
        shutil.copytree(repo / "render" / "1", repo / "render" / str(v))
    text = (repo / "render" / "config.pbtxt").read_text()
    (repo / "render" / "config.pbtxt").write_text(
        text.replace("latest: { num_versions: 2 }", "all: { }")
    )
    with live_server(
        model_dir=repo, model_control_mode="explicit", limit_versions=4, grpc_port=0
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
        error = load_error(tc, "render")
        assert "versions to serve (version_policy) 5 exceeds the limit 4 (LIMIT_VERSIONS)" in error


def test_max_batch_size_0_means_the_model_does_not_batch(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
) -> None:
    live, _, tc = explicit
    config = tc.get_model_config("render")
    config["max_batch_size"] = 0
    config.pop("dynamic_batching")
    for t in (*config["input"], *config["output"]):
        t["dims"] = [-1, *t["dims"]]
    tc.load_model("render", config=json.dumps(config))
    assert tc.get_model_config("render")["max_batch_size"] == 0  # Triton's JSON always says it
    image, version = render(tc)
    np.testing.assert_allclose(image, reference(version), atol=1e-5)

    # Concurrent requests run one call each: the statistics count as many executions.
    def one() -> None:
        own = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=60)
        render(own)
        own.close()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = tc.get_inference_statistics("render", version)["model_stats"][0]
    assert stats["execution_count"] == stats["inference_stats"]["success"]["count"]
    assert all(b["batch_size"] == 2 for b in stats["batch_stats"])


# 3. Files that cannot hang the server


def test_a_fifo_as_config_is_refused_at_once_and_nothing_waits(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
) -> None:
    live, repo, tc = explicit
    config = repo / "locate" / "config.pbtxt"
    config.unlink()
    os.mkfifo(config)
    started = time.monotonic()
    error = load_error(tc, "locate")
    assert time.monotonic() - started < 2
    assert "locate/config.pbtxt is a FIFO, not a regular file" in error
    with live.client() as c:  # everything else answers
        assert c.get("/metrics").status_code == 200
        assert c.post("/v2/repository/index").status_code == 200
        big = {"coords": [[float(i % 64), 3.0] for i in range(1000)], "format": "array"}
        assert c.post("/v1/render", json=big).status_code == 200


def test_a_hanging_read_fails_its_load_and_nothing_else_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.models import repository

    release = threading.Event()
    real = repository.read_regular

    def hanging(path: Path, limit: int, what: str) -> bytes | None:
        if "locate" in str(path):
            release.wait(30)  # a read that does not come back (a hung mount)
        return real(path, limit, what)

    monkeypatch.setattr(repository, "read_regular", hanging)
    repo = repo_with(tmp_path, "render", "locate")
    try:
        with live_server(
            model_dir=repo,
            model_control_mode="explicit",
            load_model=["render"],
            repository_timeout_s=1,
            grpc_port=0,
        ) as live:
            errors: list[str] = []

            def load() -> None:  # httpx: one tritonclient may not be shared by threads
                r = httpx.post(
                    live.url + "/v2/repository/models/locate/load", timeout=60, verify=TLS
                )
                assert r.status_code == 400
                errors.append(r.json()["error"])

            loads = [threading.Thread(target=load) for _ in range(6)]
            for t in loads:
                t.start()
            with live.client() as c:  # meanwhile, nothing else waits
                t0 = time.monotonic()
                assert c.get("/metrics").status_code == 200
                assert c.post("/v2/repository/index").status_code == 200
                assert c.post("/v1/render", json={"coords": [[3, 4]]}).status_code == 200
                assert time.monotonic() - t0 < 1
            for t in loads:
                t.join()
            assert len(errors) == 6
            assert all(
                "did not finish within 1 s" in e or "every repository reader is busy" in e
                for e in errors
            )
            started = time.monotonic()
        assert time.monotonic() - started < 5  # the stop does not wait for the stuck reads
    finally:
        release.set()


# 4. Control that means what it says


def test_an_override_applies_to_its_own_load_only(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
) -> None:
    _, _, tc = explicit
    tc.load_model("render", config=config_json(tc, "render", max_batch_size=8))
    assert tc.get_model_config("render")["max_batch_size"] == 8
    tc.load_model("render")  # a plain load re-reads config.pbtxt
    assert tc.get_model_config("render")["max_batch_size"] == 64


def test_concurrent_control_calls_apply_in_order(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
) -> None:
    live, _, tc = explicit
    only_1 = config_json(tc, "render", version_policy={"specific": {"versions": [1]}})
    tc.unload_model("render")
    answers: dict[str, int] = {}

    def call(what: str, path: str, body: dict[str, Any]) -> None:
        r = httpx.post(live.url + path, json=body, timeout=120, verify=TLS)
        answers[what] = r.status_code

    calls = [
        ("load", "/v2/repository/models/render/load", {}),
        ("unload", "/v2/repository/models/render/unload", {}),
        ("load-1", "/v2/repository/models/render/load", {"parameters": {"config": only_1}}),
    ]
    threads = []
    for what, path, body in calls:
        threads.append(threading.Thread(target=call, args=(what, path, body)))
        threads[-1].start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert answers == {"load": 200, "unload": 200, "load-1": 200}
    assert served(tc, "render") == ["1"]  # what the last call asked for
    assert render(tc)[1] == "1"


def test_version_folders_are_ascii_digits_and_compared_as_numbers(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient], tmp_path: Path
) -> None:
    live, repo, tc = explicit
    (repo / "render" / "²").mkdir()
    shutil.copy(repo / "render" / "1" / "model.onnx", repo / "render" / "²" / "model.onnx")
    outside = tmp_path / "elsewhere" / "9"
    outside.mkdir(parents=True)
    shutil.copy(repo / "render" / "1" / "model.onnx", outside / "model.onnx")
    (repo / "render" / "9").symlink_to(outside)
    tc.load_model("render")  # the odd folders are ignored, the rest loads
    assert served(tc, "render") == ["1", "2"]
    with live.client() as c:
        r = c.post("/v1/render", json={"coords": [[5, 5]], "version": "01"})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert c.get("/v2/models/render/versions/02").status_code == 200
        assert c.get("/v2/models/render/versions/3").status_code == 404


def test_a_model_folder_linking_out_is_refused_with_the_reason(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient], tmp_path: Path
) -> None:
    _, repo, tc = explicit
    outside = tmp_path / "elsewhere-model"
    shutil.copytree(MODELS / "pixel", outside)
    (repo / "pixel").symlink_to(outside)
    error = load_error(tc, "pixel")
    assert "symbolic link that leads out of the model repository" in error


def test_no_answer_names_a_server_path(
    explicit: tuple[LiveServer, Path, triton.InferenceServerClient],
) -> None:
    live, repo, _ = explicit
    (repo / "locate" / "2" / "model.onnx").write_bytes(b"not onnx")
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text("this is { not a config")
    (repo / "broken" / "1").mkdir()
    bodies = []
    with live.client() as c:
        for name in ("locate", "broken", "nothere"):
            r = c.post(f"/v2/repository/models/{name}/load")
            assert r.status_code in (400, 404)
            bodies.append(r.text)
        bodies.append(c.post("/v2/repository/index").text)
    root = str(repo.resolve())
    assert all(root not in b and str(MODELS) not in b for b in bodies), bodies
    assert "locate/2/model.onnx" in bodies[0]


def test_a_bad_version_folder_never_stops_the_poll_of_others(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "render", "locate")
    with live_server(
        model_dir=repo, model_control_mode="poll", repository_poll_secs=0.2, grpc_port=0
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
        (repo / "render" / "²").mkdir()
        os.mkfifo(repo / "render" / "config.pbtxt.tmp")
        shutil.copytree(repo / "locate" / "2", repo / "locate" / "3")
        text = (repo / "locate" / "config.pbtxt").read_text()
        (repo / "locate" / "config.pbtxt").write_text(
            text.replace("latest: { num_versions: 2 }", "latest: { num_versions: 3 }")
        )
        deadline = time.monotonic() + 20
        while served(tc, "locate") != ["1", "2", "3"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served(tc, "locate") == ["1", "2", "3"]
        assert served(tc, "render") == ["1", "2"]
