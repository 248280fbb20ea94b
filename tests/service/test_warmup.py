"""Warm-up from config.pbtxt (`model_warmup`, as Triton reads it): each sample's zero_data,
random_data or input_data_file (from the model folder's warmup/) run `count` times before the
version is ready; without one, the default warm-up; a bad warm-up config refused with one line
(through the real `tritonclient.http`), a warm-up that fails failing the load, path traversal
refused, and the serving set untouched by any of it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.dataplane.tasks import CoordConvRules
from service.errors import ModelError
from service.models import config as model_config
from service.models.version import ModelVersion, State, open_version
from service.settings import Settings
from tests.helpers import MODELS, live_server

BASE = (MODELS / "render" / "config.pbtxt").read_text()


def sample(name: str, data: str, batch: int = 1, count: int = 0, dims: str = "2") -> str:
    count_line = f"    count: {count}\n" if count else ""
    return (
        f'  {{\n    name: "{name}"\n    batch_size: {batch}\n{count_line}'
        f'    inputs {{ key: "coords" value: {{ data_type: TYPE_FP32 dims: [ {dims} ] '
        f"{data} }} }}\n  }}"
    )


def with_warmup(*samples: str, base: str = BASE) -> str:
    return base + "model_warmup [\n" + ",\n".join(samples) + "\n]\n"


def make_repo(root: Path, config: str | None = None, files: dict[str, bytes] | None = None) -> Path:
    repo = root / "models"
    shutil.copytree(MODELS / "render", repo / "render")
    shutil.copytree(MODELS / "locate", repo / "locate")
    if config is not None:
        (repo / "render" / "config.pbtxt").write_text(config)
    for name, data in (files or {}).items():
        path = repo / "render" / "warmup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return repo


def point_file(*values: float) -> bytes:
    return np.asarray(values, "<f4").tobytes()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[State, np.ndarray]]:
    """Every session call: the version's state at the time, and the batch."""
    seen: list[tuple[State, np.ndarray]] = []
    real = ModelVersion.run

    def run(self: ModelVersion, batch: np.ndarray):
        seen.append((self.state, batch.copy()))
        return real(self, batch)

    monkeypatch.setattr(ModelVersion, "run", run)
    return seen


def open_render(repo: Path, version: int = 2) -> ModelVersion:
    settings = Settings(model_dir=repo, providers="cpu")
    text = (repo / "render" / "config.pbtxt").read_text()
    config = model_config.from_text(text, "render", strict=True)
    path = repo / "render" / str(version) / "model.onnx"
    cpu = ["CPUExecutionProvider"]
    return open_version("render", version, path, config, settings, cpu, rules=CoordConvRules())


def test_the_configs_samples_run_before_the_version_is_ready(tmp_path, calls) -> None:
    config = with_warmup(
        sample("zeros", "zero_data: true", batch=4, count=2),
        sample("random", "random_data: true"),
        sample("file", 'input_data_file: "point.bin"', batch=3),
    )
    repo = make_repo(tmp_path, config, {"point.bin": point_file(10, 20)})
    m = open_render(repo)
    assert all(state is State.WARMING for state, _ in calls)  # before it takes traffic
    assert [b.shape for _, b in calls] == [(4, 2), (4, 2), (1, 2), (3, 2)]  # no default warm-up
    assert not calls[0][1].any() and not calls[1][1].any()
    assert 0 <= calls[2][1].min() and calls[2][1].max() <= 63
    np.testing.assert_array_equal(calls[3][1], [[10, 20]] * 3)  # the sample, batch_size times
    assert m.state is State.WARMING


def test_without_model_warmup_the_default_warm_up_runs(tmp_path, calls) -> None:
    open_render(make_repo(tmp_path))
    assert [b.shape for _, b in calls] == [(1, 2), (64, 2)]


def test_a_model_that_does_not_batch_warms_up_with_its_rows(tmp_path, calls) -> None:
    base = (
        BASE.replace("max_batch_size: 64", "max_batch_size: 0")
        .replace("dims: [ 2 ]", "dims: [ -1, 2 ]")
        .replace("dims: [ 64, 64 ]", "dims: [ -1, 64, 64 ]")
        .replace("dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n", "")
    )
    config = with_warmup(sample("rows", 'input_data_file: "three.bin"', dims="3, 2"), base=base)
    repo = make_repo(tmp_path, config, {"three.bin": point_file(1, 2, 3, 4, 5, 6)})
    open_render(repo)
    np.testing.assert_array_equal(calls[0][1], [[1, 2], [3, 4], [5, 6]])
    (repo / "render" / "config.pbtxt").write_text(
        with_warmup(sample("two", "zero_data: true", batch=2, dims="1, 2"), base=base)
    )
    with pytest.raises(ModelError, match="warms up with batch_size 1, got 2"):
        open_render(repo)


@pytest.fixture
def explicit(tmp_path: Path):
    repo = make_repo(tmp_path)
    with live_server(
        model_dir=repo, model_control_mode="explicit", load_model=["render"], grpc_port=0
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        yield live, repo, tc
        tc.close()


def render_ok(tc: triton.InferenceServerClient) -> str:
    x = triton.InferInput("coords", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[10, 20]], np.float32))
    result = tc.infer("render", [x])
    assert result.as_numpy("image").shape == (1, 64, 64)
    return str(result.get_response()["model_version"])


def test_a_warm_up_config_loads_from_the_file_and_as_an_override(explicit) -> None:
    _, repo, tc = explicit
    warmup = repo / "render" / "warmup"
    warmup.mkdir()
    (warmup / "point.bin").write_bytes(point_file(30, 31))
    (repo / "render" / "config.pbtxt").write_text(
        with_warmup(
            sample("file", 'input_data_file: "point.bin"', batch=8, count=3),
            sample("zeros", "zero_data: true"),
        )
    )
    tc.load_model("render")
    assert tc.is_model_ready("render", "1") and tc.is_model_ready("render", "2")
    config = tc.get_model_config("render")
    assert [s["name"] for s in config["model_warmup"]] == ["file", "zeros"]
    assert config["model_warmup"][0]["inputs"]["coords"]["input_data_file"] == "point.bin"
    assert render_ok(tc) == "2"
    # Triton's JSON form, as a load request's override.
    config["model_warmup"] = [
        {
            "name": "random",
            "batch_size": 2,
            "count": 2,
            "inputs": {"coords": {"data_type": "TYPE_FP32", "dims": [2], "random_data": True}},
        }
    ]
    tc.load_model("render", config=json.dumps(config))
    assert tc.get_model_config("render")["model_warmup"][0]["name"] == "random"
    assert render_ok(tc) == "2"


BAD = {
    "batch-zero": (sample("s", "zero_data: true", batch=0), "batch_size must be >= 1, got 0"),
    "batch-too-large": (
        sample("s", "zero_data: true", batch=65),
        "batch_size 65 exceeds max_batch_size 64",
    ),
    "unknown-input": (
        sample("s", "zero_data: true").replace('key: "coords"', 'key: "coordz"'),
        "inputs ['coordz'] must be exactly the model's inputs ['coords']",
    ),
    "dims": (sample("s", "zero_data: true", dims="3"), "input 'coords' has dims [3]"),
    "data-type": (
        sample("s", "zero_data: true").replace("TYPE_FP32", "TYPE_FP16"),
        "input 'coords' is TYPE_FP16; the model takes TYPE_FP32",
    ),
    "no-data": (sample("s", ""), "sets none of zero_data, random_data, input_data_file"),
    "traversal": (
        sample("s", 'input_data_file: "../../locate/config.pbtxt"'),
        "must name a file inside the model's warmup/ folder",
    ),
    "absolute": (
        sample("s", 'input_data_file: "/etc/passwd"'),
        "must name a file inside the model's warmup/ folder",
    ),
    "symlink-out": (
        sample("s", 'input_data_file: "link.bin"'),
        "render/warmup/link.bin leads out of render/warmup/",
    ),
    "missing-file": (
        sample("s", 'input_data_file: "nope.bin"'),
        "input_data_file render/warmup/nope.bin does not exist",
    ),
    "wrong-size": (
        sample("s", 'input_data_file: "short.bin"'),
        "warmup/short.bin holds 12 bytes; FP32 [2] is 8 bytes",
    ),
    "not-finite": (
        sample("s", 'input_data_file: "nan.bin"'),
        "warmup/nan.bin holds values that are not finite",
    ),
    "too-many-runs": (
        sample("s", "zero_data: true", count=2000),
        "model_warmup asks for 2000 runs in all (count), over the limit 1000 (LIMIT_WARMUP_RUNS)",
    ),
    "fails": (  # a warm-up that runs and fails: outputs that are not finite
        sample("huge", 'input_data_file: "huge.bin"'),
        "warm-up model_warmup[0] 'huge' gave image with values that are not finite",
    ),
}


@pytest.mark.parametrize("fault", sorted(BAD))
def test_a_bad_warm_up_is_refused_with_one_line_and_the_serving_set_stays(explicit, fault) -> None:
    _, repo, tc = explicit
    text, message = BAD[fault]
    warmup = repo / "render" / "warmup"
    warmup.mkdir()
    (warmup / "short.bin").write_bytes(point_file(1, 2, 3))
    (warmup / "nan.bin").write_bytes(point_file(float("nan"), 1))
    (warmup / "huge.bin").write_bytes(point_file(3e38, 3e38))
    os.symlink(repo / "locate" / "config.pbtxt", warmup / "link.bin")
    (repo / "render" / "config.pbtxt").write_text(with_warmup(text))
    with pytest.raises(InferenceServerException) as caught:
        tc.load_model("render")
    error = str(caught.value.message())
    assert message in error, error
    print(f"\n{fault}: {error}")
    assert "\n" not in error.strip() and "Traceback" not in error
    assert str(repo) not in error  # no server path
    assert tc.is_model_ready("render") and render_ok(tc) == "2"
    entries = tc.get_model_repository_index()
    assert {"name": "render", "version": "2", "state": "READY", "reason": ""} in entries


def test_a_warm_up_longer_than_its_time_limit_is_refused_with_one_line(tmp_path) -> None:
    repo = make_repo(tmp_path)
    with live_server(
        model_dir=repo, model_control_mode="explicit", load_model=["*"], limit_warmup_s=0.5
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        (repo / "render" / "config.pbtxt").write_text(
            with_warmup(sample("long", "random_data: true", batch=64, count=1000))
        )
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as caught:
            tc.load_model("render")
        assert time.monotonic() - started < 30  # 1,000 runs would take minutes
        error = str(caught.value.message())
        assert "warm-up ran longer than LIMIT_WARMUP_S=0.5 s" in error, error
        assert "\n" not in error.strip() and "Traceback" not in error
        assert tc.is_model_ready("render") and render_ok(tc) == "2"  # the old versions serve on
        tc.close()
