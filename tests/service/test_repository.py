"""The live model repository, driven by the real `tritonclient.http`: index, load, unload,
readiness, versions side by side, per-version inference and metadata, statistics, effective
config; broken loads refused with one line while the serving set stays; zero-downtime reloads
under load, in explicit and poll mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import MODELS, TLS, live_server, wait_for
from training import data


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


RENDER_V1 = MODELS / "render" / "1" / "model.onnx"
# A second render graph with the same signature but other answers: the deconv baseline.
RENDER_ALT = MODELS / "render-baseline" / "1" / "model.onnx"
COORDS = data.centres()[::211]


def make_repo(root: Path, versions: dict[int, Path], policy: str = "latest 2") -> Path:
    """A repository with model `render` at the given version files, and `locate`."""
    repo = root / "repo"
    (repo / "render").mkdir(parents=True)
    for v, src in versions.items():
        (repo / "render" / str(v)).mkdir()
        shutil.copy(src, repo / "render" / str(v) / "model.onnx")
    config = (MODELS / "render" / "config.pbtxt").read_text()
    kind, _, n = policy.partition(" ")
    config = config.replace(
        "version_policy: { latest: { num_versions: 2 } }",
        f"version_policy: {{ latest: {{ num_versions: {n} }} }}"
        if kind == "latest"
        else "version_policy: { all: { } }",
    )
    (repo / "render" / "config.pbtxt").write_text(config)
    shutil.copytree(MODELS / "locate", repo / "locate")
    return repo


def expected_by_sha(*paths: Path) -> dict[str, np.ndarray]:
    """What each ONNX file answers for COORDS, keyed by its sha256 (X-Model-SHA256)."""
    out = {}
    for p in paths:
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        out[sha256_of(p)] = s.run(None, {"coords": COORDS})[0]
    return out


def infer(tc: triton.InferenceServerClient, version: str = "") -> tuple[np.ndarray, str]:
    x = triton.InferInput("coords", list(COORDS.shape), "FP32")
    x.set_data_from_numpy(COORDS)
    result = tc.infer("render", [x], model_version=version)
    return result.as_numpy("image"), result.get_response()["model_version"]


@pytest.fixture
def explicit(tmp_path):
    repo = make_repo(tmp_path, {1: RENDER_V1})
    with live_server(model_dir=repo, model_control_mode="explicit", load_model=["render"]) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        yield live, repo, tc
        tc.close()


def test_explicit_mode_index_load_unload_and_readiness(explicit) -> None:
    live, _, tc = explicit
    index = {(e["name"], e.get("version", "")): e["state"] for e in tc.get_model_repository_index()}
    assert index == {("render", "1"): "READY", ("locate", ""): "UNAVAILABLE"}
    assert tc.is_server_ready() and tc.is_model_ready("render")
    assert not tc.is_model_ready("locate")

    tc.load_model("locate")
    assert tc.is_model_ready("locate") and tc.is_model_ready("locate", "1")
    ready = [e["name"] for e in tc.get_model_repository_index()]
    assert sorted(set(ready)) == ["locate", "render"]

    tc.unload_model("locate")
    assert not tc.is_model_ready("locate")
    r = httpx.post(
        live.url + "/v1/locate", json={"images": [data.squares([[9, 9]])[0].tolist()]}, verify=TLS
    )
    assert r.status_code == 404
    assert r.json()["detail"] == "unknown model 'locate'; loaded models: render"
    with pytest.raises(InferenceServerException, match="is not loaded"):
        tc.unload_model("locate")


def test_versions_side_by_side(explicit) -> None:
    live, repo, tc = explicit
    (repo / "render" / "2").mkdir()
    shutil.copy(RENDER_ALT, repo / "render" / "2" / "model.onnx")
    tc.load_model("render")
    want = expected_by_sha(RENDER_V1, RENDER_ALT)
    v1, v2 = want[sha256_of(RENDER_V1)], want[sha256_of(RENDER_ALT)]

    assert tc.get_model_metadata("render")["versions"] == ["1", "2"]
    assert tc.get_model_metadata("render", "1")["versions"] == ["1"]
    assert tc.is_model_ready("render", "1") and tc.is_model_ready("render", "2")
    y1, name1 = infer(tc, "1")
    y2, name2 = infer(tc, "2")
    latest, name_latest = infer(tc)
    assert (name1, name2, name_latest) == ("1", "2", "2")  # no version: the highest
    np.testing.assert_allclose(y1, v1, atol=1e-5)
    np.testing.assert_allclose(y2, v2, atol=1e-5)
    np.testing.assert_allclose(latest, v2, atol=1e-5)

    # The product API takes a version too and names the one that answered.
    with httpx.Client(base_url=live.url, verify=TLS) as c:
        r = c.post("/v1/render", json={"coords": [[10, 20]], "version": 1, "format": "array"})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert r.json()["version"] == "1"
        r = c.post("/v1/render", json={"coords": [[10, 20]]})
        assert r.headers["x-model-version"] == "2"
        assert r.headers["x-model-sha256"] == sha256_of(RENDER_ALT)
        r = c.post("/v1/render", json={"coords": [[10, 20]], "version": "7"})
        assert r.status_code == 404
        assert (
            r.json()["detail"] == "model 'render' version '7' is not served; available: ['1', '2']"
        )
        listed = {(m["name"], m["version"]) for m in c.get("/v1/models").json()["models"]}
        assert {("render", "1"), ("render", "2")} <= listed
        metrics = c.get("/metrics").text
    assert 'coordconv_inference_count_total{model="render",version="1"}' in metrics
    assert 'coordconv_inference_count_total{model="render",version="2"}' in metrics

    # Statistics per version, in Triton's shape.
    stats = tc.get_inference_statistics("render", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("render", "1")]
    s = stats[0]
    assert s["inference_stats"]["success"]["count"] == 2  # tritonclient and /v1
    assert s["inference_count"] == len(COORDS) + 1
    assert s["execution_count"] >= 2 and s["last_inference"] > 0
    assert s["inference_stats"]["compute_infer"]["ns"] > 0
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
    every = tc.get_inference_statistics()["model_stats"]
    assert {(e["name"], e["version"]) for e in every} == {("render", "1"), ("render", "2")}

    # A config override that serves version 1 only (Triton's way to unload a version).
    config = tc.get_model_config("render")
    assert config["max_batch_size"] == 64 and config["name"] == "render"
    config["version_policy"] = {"specific": {"versions": [1]}}
    tc.load_model("render", config=json.dumps(config))
    assert tc.get_model_metadata("render")["versions"] == ["1"]
    assert not tc.is_model_ready("render", "2")
    assert tc.get_model_config("render")["version_policy"] == {"specific": {"versions": [1]}}


def test_config_pbtxt_is_honoured(tmp_path) -> None:
    repo = make_repo(tmp_path, {1: RENDER_V1})
    config = repo / "render" / "config.pbtxt"
    config.write_text(
        config.read_text()
        .replace("max_batch_size: 64", "max_batch_size: 8")
        .replace(
            "max_queue_delay_microseconds: 500",
            "max_queue_delay_microseconds: 100000\n  preferred_batch_size: [ 4 ]\n"
            "  default_queue_policy { max_queue_size: 12 }",
        )
    )
    with live_server(model_dir=repo) as live, httpx.Client(base_url=live.url, verify=TLS) as c:
        cfg = c.get("/v2/models/render/config").json()
        assert cfg["max_batch_size"] == 8
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [4]
        assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 12
        body = {
            "inputs": [
                {"name": "coords", "shape": [9, 2], "datatype": "FP32", "data": [[1, 1]] * 9}
            ]
        }
        r = c.post("/v2/models/render/infer", json=body)
        assert r.status_code == 400
        assert "batch size 9 exceeds max_batch_size 8" in r.json()["error"]
        # /v1 splits a large request over calls of at most max_batch_size.
        r = c.post("/v1/render", json={"coords": [[5, 5]] * 12, "format": "array"})
        assert r.status_code == 200 and len(r.json()["images"]) == 12
        r = c.post("/v1/render", json={"coords": [[5, 5]] * 13})
        assert r.status_code == 400
        assert (
            "13 items can never fit model 'render''s queue (max_queue_size 12)"
            in r.json()["detail"]
        )
        stats = c.get("/v2/models/render/stats").json()["model_stats"][0]
        sizes = {b["batch_size"] for b in stats["batch_stats"]}
    assert sizes == {4}  # 12 items: three batches of the preferred size (as Triton forms them)


BROKEN = ["mismatch", "missing-config", "foreign-graph", "corrupt-onnx", "traversal", "empty"]


@pytest.mark.parametrize("fault", BROKEN)
def test_a_broken_load_is_one_clear_line_and_the_serving_set_stays(explicit, fault) -> None:
    _, repo, tc = explicit
    model = "render"
    if fault == "mismatch":
        config = repo / "render" / "config.pbtxt"
        config.write_text(config.read_text().replace("dims: [ 2 ]", "dims: [ 3 ]"))
        message = "input 'coords' has dims [3] in the config but [2]"
    elif fault == "missing-config":
        (repo / "render" / "config.pbtxt").unlink()
        message = "model render: config.pbtxt is missing"
    elif fault == "foreign-graph":  # a locate graph dropped in as render version 2
        (repo / "render" / "2").mkdir()
        shutil.copy(MODELS / "locate" / "1" / "model.onnx", repo / "render" / "2" / "model.onnx")
        message = "config inputs ['coords'] differ from the graph's ['image']"
    elif fault == "corrupt-onnx":
        (repo / "render" / "2").mkdir()
        (repo / "render" / "2" / "model.onnx").write_bytes(b"\x08\x01garbage")
        message = "model render version 2"
    elif fault == "traversal":
        model = "../models/render"
        message = "invalid model name '../models/render'"
    else:
        (repo / "empty").mkdir()
        model = "empty"
        message = "model empty: config.pbtxt is missing"
    with pytest.raises(InferenceServerException) as caught:
        tc.load_model(model)
    text = str(caught.value)
    assert message in text and "\n" not in text.strip() and "Traceback" not in text
    # Still serving version 1, answering correctly.
    assert tc.is_model_ready("render", "1")
    y, version = infer(tc)
    assert version == "1"
    np.testing.assert_allclose(y, expected_by_sha(RENDER_V1)[sha256_of(RENDER_V1)], atol=1e-5)
    # The index says why the model failed, without touching what serves.
    if fault != "traversal":
        entries = tc.get_model_repository_index()
        assert {"name": "render", "version": "1", "state": "READY", "reason": ""} in entries


def test_traversal_in_raw_http_paths_is_refused(explicit) -> None:
    live, _, _ = explicit
    for path in ("/v2/repository/models/..%2F..%2Fetc/load", "/v2/repository/models/.hidden/load"):
        r = httpx.post(live.url + path, verify=TLS)
        assert r.status_code == 400 and "invalid model name" in r.json()["error"]


def test_control_is_refused_outside_explicit_mode(client) -> None:
    r = client.post("/v2/repository/models/render/unload")
    assert r.status_code == 400
    assert "not allowed in 'none' model control mode" in r.json()["error"]
    assert client.get("/v2/models/render/ready").status_code == 200


def test_a_model_still_loading_answers_503_with_retry_after() -> None:
    from service.errors import Unavailable
    from service.metrics import Metrics
    from service.models.registry import ModelRegistry
    from service.settings import Settings

    registry = ModelRegistry(Settings(model_dir=MODELS, providers="cpu"), Metrics())
    registry.loading.add("render")
    with pytest.raises(Unavailable, match="model 'render' is loading") as caught:
        registry.get("render")
    assert caught.value.headers == {"Retry-After": "1"}


def test_not_strict_derives_a_missing_config_from_the_graph(tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "locate", repo / "locate")
    (repo / "locate" / "config.pbtxt").unlink()
    with live_server(model_dir=repo, strict_model_config=False) as live:
        cfg = httpx.get(live.url + "/v2/models/locate/config", verify=TLS).json()
    assert cfg["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [64, 64]}]
    assert cfg["max_batch_size"] == 64  # MAX_BATCH_SIZE, where the config is silent


# Zero downtime under load


class Load:
    """32 clients sending /v1/render continuously from a thread; every answer is checked
    against the ONNX file that answered it (by X-Model-SHA256)."""

    def __init__(self, url: str, expected: dict[str, np.ndarray], clients: int = 32) -> None:
        self.url, self.expected, self.clients = url, expected, clients
        self.sent = 0
        self.failed: list[str] = []
        self.versions: Counter[tuple[str, str]] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits, verify=TLS) as c:
            await asyncio.gather(*(self._client(c, i) for i in range(self.clients)))

    async def _client(self, c: httpx.AsyncClient, i: int) -> None:
        k = i % len(COORDS)
        while not self.stop.is_set():
            self.sent += 1
            try:
                r = await c.post(
                    "/v1/render", json={"coords": [COORDS[k].tolist()], "format": "array"}
                )
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))
                continue
            if r.status_code != 200:
                self.failed.append(f"{r.status_code} {r.text[:200]}")
                continue
            sha = r.headers["x-model-sha256"]
            got = np.asarray(r.json()["images"][0], np.float32)
            if not np.allclose(got, self.expected[sha][k], atol=1e-4):
                self.failed.append(f"wrong answer from version {r.headers['x-model-version']}")
            self.versions[(r.headers["x-model-version"], sha[:8])] += 1

    def answered(self) -> int:
        return sum(self.versions.values()) + len(self.failed)

    def more(self, answers: int = 64) -> None:
        """Wait until `answers` more requests are answered: the load has run in this state."""
        target = self.answered() + answers
        wait_for(lambda: self.answered() >= target or not self.thread.is_alive(), timeout=60)

    def saw(self, version: str, path: Path) -> None:
        """Wait until an answer came from `version` holding the graph of `path`."""
        key = (version, sha256_of(path)[:8])
        wait_for(lambda: key in self.versions or not self.thread.is_alive(), timeout=60)

    def __enter__(self) -> Load:
        self.thread.start()
        self.more()
        return self

    def __exit__(self, *exc: object) -> None:
        self.more()
        self.stop.set()
        self.thread.join(timeout=60)


def test_reload_under_load_explicit_mode_fails_nothing(explicit) -> None:
    live, repo, tc = explicit
    expected = expected_by_sha(RENDER_V1, RENDER_ALT)
    v2 = repo / "render" / "2"
    with Load(live.url, expected) as load:
        v2.mkdir()
        shutil.copy(RENDER_ALT, v2 / "model.onnx")
        tc.load_model("render")  # version 2 added beside version 1
        load.saw("2", RENDER_ALT)
        config = tc.get_model_config("render")
        config["version_policy"] = {"specific": {"versions": [2]}}
        tc.load_model("render", config=json.dumps(config))  # version 1 unloaded
        load.more()
        shutil.copy(RENDER_V1, v2 / "model.onnx.new")  # version 2 replaced by another graph
        (v2 / "model.onnx.new").replace(v2 / "model.onnx")
        tc.load_model("render", config=json.dumps(config))  # version 2 reloaded
        load.saw("2", RENDER_V1)
    print(
        f"\nreload under load (explicit): sent {load.sent}, failed {len(load.failed)}, "
        f"versions seen {dict(load.versions)}"
    )
    assert load.failed == []
    seen = {v for v, _ in load.versions}
    assert seen == {"1", "2"}
    assert len(load.versions) == 3  # v1, v2 (baseline graph), v2 (reloaded with v1's graph)
    assert load.sent > 100


def test_reload_under_load_poll_mode_fails_nothing(tmp_path) -> None:
    repo = make_repo(tmp_path, {1: RENDER_V1})
    expected = expected_by_sha(RENDER_V1, RENDER_ALT)
    poll = 0.3
    with live_server(model_dir=repo, model_control_mode="poll", repository_poll_secs=poll) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        with Load(live.url, expected) as load:
            staging = tmp_path / "staging"
            staging.mkdir()
            shutil.copy(RENDER_ALT, staging / "model.onnx")
            staging.rename(repo / "render" / "2")  # a new version directory
            wait_for(lambda: tc.is_model_ready("render", "2"))
            shutil.rmtree(repo / "render" / "1")  # a removed one
            wait_for(lambda: not tc.is_model_ready("render", "1"))
            shutil.copy(RENDER_V1, repo / "render" / "2" / "model.onnx.new")
            (repo / "render" / "2" / "model.onnx.new").replace(repo / "render" / "2" / "model.onnx")
            wait_for(
                lambda: (
                    infer(tc)[0].max() > 0
                    and httpx.post(
                        live.url + "/v1/render", json={"coords": [[5, 5]]}, verify=TLS
                    ).headers["x-model-sha256"]
                    == sha256_of(RENDER_V1)
                )
            )  # a changed file, reloaded
            shutil.copytree(MODELS / "pixel", repo / "pixel")  # a new model
            wait_for(lambda: tc.is_model_ready("pixel"))
            shutil.rmtree(repo / "pixel")  # and gone again
            wait_for(lambda: not tc.is_model_ready("pixel"))
        tc.close()
    print(
        f"\nreload under load (poll): sent {load.sent}, failed {len(load.failed)}, "
        f"versions seen {dict(load.versions)}"
    )
    assert load.failed == []
    assert {v for v, _ in load.versions} == {"1", "2"} and len(load.versions) == 3
