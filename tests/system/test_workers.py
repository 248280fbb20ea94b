"""`coordconv serve --workers N` as a process: one port, and one server whichever worker a client
reaches (model control, statistics, /metrics), a worker that dies comes back with the same
models, SIGTERM drains every worker and exits 0."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from pydantic import ValidationError

from service.models.statistics import merge
from service.settings import Settings
from tests.helpers import MODELS, Workers


@pytest.fixture
def explicit() -> Iterator[Workers]:
    w = Workers("--model-control-mode", "explicit", "--load-model", "render")
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()


def render_count(text: str) -> float:
    return sum(
        float(v)
        for v in re.findall(
            r'^coordconv_inference_count_total\{model="render".*} (\S+)$', text, re.M
        )
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.serial  # timed: runs alone, after the parallel pass
def test_workers_answer_as_one_server(explicit: Workers) -> None:
    clients = explicit.by_worker()
    assert sorted(clients) == [0, 1]
    pids = [clients[i].get("/healthz").json()["pid"] for i in (0, 1)]
    assert pids[0] != pids[1]

    # Inference on both; statistics and /metrics count both, whichever worker answers.
    for i in (0, 1):
        for _ in range(3 + i):
            r = clients[i].post("/v1/render", json={"coords": [[9, 9], [30, 40]]})
            assert r.status_code == 200, r.text
    for i in (0, 1):
        stats = clients[i].get("/v2/models/render/stats").json()["model_stats"]
        assert sum(s["inference_count"] for s in stats) == 14
        assert sum(s["inference_stats"]["success"]["count"] for s in stats) == 7
        assert render_count(clients[i].get("/metrics").text) == 14

    # gRPC shares its port the same way.
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{explicit.grpc_port}")
    inp = grpcclient.InferInput("coords", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[20, 20]], np.float32))
    assert grpc.infer("render", [inp]).as_numpy("image").shape == (1, 64, 64)
    grpc_stats = grpc.get_inference_statistics("render", as_json=True)["model_stats"]
    assert sum(int(s.get("inference_count", 0)) for s in grpc_stats) == 15

    # A load through worker 0 reaches worker 1, an unload through worker 1 reaches worker 0.
    r = clients[0].post("/v2/repository/models/locate/load")
    assert r.status_code == 200, r.text
    names = {m["name"] for m in clients[1].get("/v1/models").json()["models"]}
    assert names == {"render", "locate"}
    r = clients[1].post("/v2/repository/models/render/unload")
    assert r.status_code == 200, r.text
    names = {m["name"] for m in clients[0].get("/v1/models").json()["models"]}
    assert names == {"locate"}
    assert clients[0].post("/v1/render", json={"coords": [[9, 9]]}).status_code == 404

    # Loads through both workers at once, one with a config override: every worker ends up
    # with both, in the same configuration, and they describe them alike.
    config = clients[0].get("/v2/models/locate/config").json()
    config["version_policy"] = {"specific": {"versions": [1]}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loads = [
            pool.submit(clients[0].post, "/v2/repository/models/pixel/load"),
            pool.submit(
                clients[1].post,
                "/v2/repository/models/locate/load",
                json={"parameters": {"config": json.dumps(config)}},
            ),
        ]
        assert [f.result().status_code for f in loads] == [200, 200]
    models = [clients[i].get("/v1/models").json() for i in (0, 1)]
    assert models[0] == models[1]
    assert {(m["name"], m["version"]) for m in models[0]["models"]} == {
        ("locate", "1"),
        *(("pixel", v) for v in ("1", "2")),
    }
    assert clients[0].get("/v2/models/locate/config").json()["version_policy"] == {
        "specific": {"versions": [1]}
    }

    # A failed load says why, through either worker, and changes nothing.
    r = clients[1].post("/v2/repository/models/nosuchmodel/load")
    assert r.status_code in (400, 404) and "nosuchmodel" in r.json()["error"]
    index = [clients[i].post("/v2/repository/index", json={"ready": True}).json() for i in (0, 1)]
    assert index[0] == index[1]
    assert {e["name"] for e in index[0]} == {"locate", "pixel"}

    for c in clients.values():
        c.close()
    code, out = explicit.stop()
    assert code == 0, out
    assert "Traceback" not in out
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "a worker outlived SIGTERM"


def test_a_killed_worker_comes_back_serving_what_its_siblings_serve(explicit: Workers) -> None:
    clients = explicit.by_worker()
    assert clients[0].post("/v2/repository/models/locate/load").status_code == 200
    old = clients[1].get("/healthz").json()["pid"]
    for c in clients.values():
        c.close()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "worker 1 did not come back"
        clients = explicit.by_worker()
        health = clients[1].get("/healthz").json()
        if health["pid"] != old:
            break
        time.sleep(0.2)
    names = {m["name"] for m in clients[1].get("/v1/models").json()["models"]}
    assert names == {"render", "locate"}
    for c in clients.values():
        c.close()
    code, out = explicit.stop()
    assert code == 0, out
    assert "worker 1" in out and "starting it again" in out


def restarted(w: Workers, index: int) -> dict[int, httpx.Client]:
    """SIGKILL worker `index`; a client held by each worker once the supervisor has started it
    again."""
    clients = w.by_worker()
    old = clients[index].get("/healthz").json()["pid"]
    for c in clients.values():
        c.close()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, f"worker {index} did not come back"
        clients = w.by_worker()
        if clients[index].get("/healthz").json()["pid"] != old:
            return clients
        for c in clients.values():
            c.close()
        time.sleep(0.2)


RENDER_COORDS = np.array([[10, 20], [40.5, 33], [3, 60]], np.float32)


@pytest.mark.parametrize(("mode", "killed"), [("explicit", (0, 1)), ("none", (1,))])
def test_a_restarted_worker_serves_what_its_siblings_serve_not_the_disk(
    tmp_path: Path, mode: str, killed: tuple[int, ...]
) -> None:
    """Both models' policy is `latest 2`. Explicit mode: `render` is loaded at start, `locate`
    by a load request; none mode: both at start. Then version 3 of each appears on disk (and in
    none mode a model folder), loaded by nobody. A worker killed and started again serves
    versions 1 and 2 of both, as its sibling does, not the disk's 2 and 3. In explicit mode
    each worker in turn on one server: worker 0, which did not take the load request, then
    worker 1, which did (both replay the control log, whoever wrote the entry)."""
    repo = tmp_path / "models"
    for name in ("render", "locate"):
        shutil.copytree(MODELS / name, repo / name)
    args = ["--model-control-mode", mode, "--model-dir", str(repo)]
    w = Workers(*args, *(["--load-model", "render"] if mode == "explicit" else []))
    try:
        clients = w.by_worker()
        if mode == "explicit":  # a load entry in the control log, taken by worker 1
            r = clients[1].post("/v2/repository/models/locate/load")
            assert r.status_code == 200, r.text
        want = {(n, v) for n in ("render", "locate") for v in ("1", "2")}
        models = clients[0].get("/v1/models").json()
        assert {(m["name"], m["version"]) for m in models["models"]} == want
        for c in clients.values():
            c.close()
        for name in ("render", "locate"):  # version 1's file: answers unlike version 2's
            shutil.copytree(repo / name / "1", repo / name / "3")
        if mode == "none":
            shutil.copytree(MODELS / "pixel", repo / "pixel")
        session = ort.InferenceSession(
            str(repo / "render" / "2" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        expected = session.run(None, {"coords": RENDER_COORDS})[0]

        for index in killed:
            clients = restarted(w, index)
            versions, values = [], []
            for _ in range(6):
                for i in (0, 1):
                    r = clients[i].post(
                        "/v1/render",
                        json={"coords": RENDER_COORDS.tolist()},
                        headers={"Accept": "application/x-npy"},
                    )
                    assert r.status_code == 200, r.text
                    versions.append(r.headers["X-Model-Version"])
                    values.append(np.load(io.BytesIO(r.content)))
            assert versions == ["2"] * 12, (index, versions)
            for v in values:
                np.testing.assert_allclose(v, expected, rtol=0, atol=1e-5)
            for i in (0, 1):
                r = clients[i].post(
                    "/v2/models/locate/infer",
                    json={
                        "inputs": [
                            {
                                "name": "image",
                                "datatype": "FP32",
                                "shape": [1, 64, 64],
                                "data": [0.0] * 4096,
                            }
                        ]
                    },
                )
                assert r.status_code == 200, r.text
                assert r.json()["model_version"] == "2"

            models = [clients[i].get("/v1/models").json() for i in (0, 1)]
            assert models[0] == models[1]
            assert {(m["name"], m["version"]) for m in models[0]["models"]} == want
            index_of = [clients[i].post("/v2/repository/index", json={}).json() for i in (0, 1)]
            assert index_of[0] == index_of[1]
            ready = {(e["name"], e["version"]) for e in index_of[0] if e["state"] == "READY"}
            assert ready == want, index
            for c in clients.values():
                c.close()
        code, out = w.stop()
        assert code == 0, out
        assert "Traceback" not in out, out
    finally:
        w.close()


def test_a_restarted_worker_never_serves_a_version_its_siblings_do_not(tmp_path: Path) -> None:
    """Version 1 is deleted from disk while the workers serve it (from memory), version 3
    appears: a restarted worker cannot load 1, so it serves 2 alone (not the disk's 2 and 3),
    and says so in one line."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "render", repo / "render")
    w = Workers(
        *("--model-control-mode", "explicit", "--load-model", "render", "--model-dir", str(repo))
    )
    try:
        for c in w.by_worker().values():
            c.close()
        shutil.copytree(repo / "render" / "1", repo / "render" / "3")
        shutil.rmtree(repo / "render" / "1")
        clients = restarted(w, 1)
        served = [
            {m["version"] for m in clients[i].get("/v1/models").json()["models"]} for i in (0, 1)
        ]
        assert served == [{"1", "2"}, {"2"}]
        for i in (0, 1):
            for _ in range(3):
                r = clients[i].post("/v1/render", json={"coords": [[9, 9]]})
                assert r.status_code == 200 and r.headers["X-Model-Version"] == "2", r.text
        for c in clients.values():
            c.close()
        code, out = w.stop()
        assert code == 0, out
        assert "cannot serve render versions [1, 2] as the other workers do" in out, out
        assert "serving versions [2]" in out and "Traceback" not in out, out
    finally:
        w.close()


def test_a_bad_repository_is_one_line_with_workers(tmp_path) -> None:
    w = Workers("--model-dir", str(tmp_path / "missing"))
    w.proc.wait(timeout=60)
    out = w.all_output()
    assert w.proc.returncode == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "missing") in lines[0], out


def test_workers_setting() -> None:
    assert Settings(workers="auto").workers == len(os.sched_getaffinity(0))
    assert Settings(workers="3").workers == 3
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings(workers=0)


def test_workers_share_the_cores_out_unless_threads_are_set() -> None:
    from service.scaling.workers import worker_settings

    assert worker_settings(Settings(workers=2), cores=16)["intra_op_threads"] == 8
    assert worker_settings(Settings(workers=3), cores=16)["intra_op_threads"] == 5
    assert worker_settings(Settings(workers=8), cores=2)["intra_op_threads"] == 1
    given = Settings(workers=2, intra_op_threads=6)
    assert worker_settings(given, cores=16)["intra_op_threads"] == 6  # the user's choice stands
    assert Settings(**worker_settings(Settings(workers=2), cores=4)).workers == 2  # round-trips


def test_statistics_of_two_workers_add_up() -> None:
    def entry(n: int, batch: int) -> dict:
        d = {"count": n, "ns": 10 * n}
        return {
            "name": "render",
            "version": "1",
            "last_inference": n,
            "inference_count": n,
            "execution_count": 1,
            "inference_stats": {"success": dict(d), "fail": {"count": 0, "ns": 0}},
            "batch_stats": [{"batch_size": batch, "compute_infer": dict(d)}],
            "memory_usage": [],
        }

    a, b = [entry(2, 2)], [entry(3, 2)]
    merged = merge([a, b, [entry(1, 1)]])
    assert len(merged) == 1
    m = merged[0]
    assert (m["inference_count"], m["execution_count"], m["last_inference"]) == (6, 3, 3)
    assert m["inference_stats"]["success"] == {"count": 6, "ns": 60}
    assert [(s["batch_size"], s["compute_infer"]["count"]) for s in m["batch_stats"]] == [
        (1, 1),
        (2, 5),
    ]
    assert a[0]["inference_count"] == 2  # the inputs are not changed
