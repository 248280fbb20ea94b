"""/metrics in NVIDIA Triton's names and labels: after a known workload over /v1, /v2 (tritonclient
.http) and gRPC (tritonclient.grpc), failures included, every family, label and count is what was
sent and what the statistics extension says; failure reasons; the pending gauge; series that
follow loads and unloads; CPU and GPU gauges (NVML stood in for). With `--workers 2`:
tests/system/test_triton_metrics_workers.py."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from service.errors import ClientClosedRequest, InferenceFailed, Unavailable
from service.metrics import (
    DURATIONS,
    FAILURE_REASONS,
    FIRST_RESPONSE_BUCKETS_MS,
    Metrics,
    failure_reason,
)
from service.metrics.system import Gpus, SystemCollector
from service.models.batcher import Batcher
from service.models.config import Scheduling
from service.models.statistics import ModelStats
from tests.helpers import TLS, live_server, metric, png_b64, wait_for
from training import data

# Triton's families (docs/user_guide/metrics.md) and their types as Triton declares them.
TRITON = {
    "nv_inference_request_success": "counter",
    "nv_inference_request_failure": "counter",
    "nv_inference_count": "counter",
    "nv_inference_exec_count": "counter",
    "nv_inference_request_duration_us": "counter",
    "nv_inference_queue_duration_us": "counter",
    "nv_inference_compute_input_duration_us": "counter",
    "nv_inference_compute_infer_duration_us": "counter",
    "nv_inference_compute_output_duration_us": "counter",
    "nv_inference_pending_request_count": "gauge",
    "nv_inference_first_response_histogram_ms": "histogram",
    "nv_cache_num_hits_per_model": "counter",
    "nv_cache_num_misses_per_model": "counter",
    "nv_cache_hit_duration_per_model": "counter",
    "nv_cache_miss_duration_per_model": "counter",
    "nv_cpu_utilization": "gauge",
    "nv_cpu_memory_total_bytes": "gauge",
    "nv_cpu_memory_used_bytes": "gauge",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """The text format read by hand (prometheus_client's parser renames counters to *_total)."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line and not line.startswith("#"):
                m = SAMPLE.match(line)
                assert m, line
                labels = dict(LABEL.findall(m.group(2) or ""))
                self.samples.append((m.group(1), labels, float(m.group(3))))

    def value(self, name: str, **labels: str) -> float:
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def series(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]


def scrape(url: str) -> Scrape:
    return Scrape(httpx.get(url + "/metrics", timeout=30, verify=TLS).text)


def stats_of(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The statistics extension's entries of every served model version, ensembles included."""
    entries = httpx.get(url + "/v2/models/stats", timeout=30, verify=TLS).json()["model_stats"]
    return {(e["name"], e["version"]): e for e in entries}


def assert_agrees_with_statistics(
    s: Scrape, stats: dict[tuple[str, str], dict[str, Any]], reloaded: bool = False
) -> None:
    """Every served version: Triton's families equal the statistics extension's counts (and,
    unless a version was `reloaded`, so do this service's own, which count over reloads)."""
    for (name, version), e in stats.items():
        ls = {"model": name, "version": version}
        phases = e["inference_stats"]
        for field, (count_name, us_name) in DURATIONS.items():
            if count_name is not None:
                assert s.value(count_name, **ls) == phases[field]["count"], (count_name, ls)
            if us_name is not None:
                assert s.value(us_name, **ls) == pytest.approx(phases[field]["ns"] / 1000), us_name
        failed = sum(
            s.value("nv_inference_request_failure", **ls, reason=r) for r in FAILURE_REASONS
        )
        assert failed == phases["fail"]["count"], ls
        assert s.value("nv_inference_count", **ls) == e["inference_count"]
        assert s.value("nv_inference_exec_count", **ls) == e["execution_count"]
        assert (
            s.value("nv_inference_first_response_histogram_ms_count", **ls)
            == (phases["success"]["count"])
        )
        assert s.value("nv_inference_first_response_histogram_ms_sum", **ls) == pytest.approx(
            phases["success"]["ns"] / 1e6
        )
        assert s.value("nv_inference_pending_request_count", **ls) == 0
        if reloaded:
            continue
        # this service's own execution counts are counted at the same point
        assert s.value("coordconv_inference_count_total", **ls) == e["inference_count"]
        assert s.value("coordconv_execution_count_total", **ls) == e["execution_count"]


def test_triton_metrics_after_a_known_workload_agree_with_what_was_sent(tmp_path: Path) -> None:
    coords = data.centres()[::401].astype(np.float32)  # 8 points
    with live_server() as live:
        http = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
        grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        # /v1: render 3 items (version 2, the highest), locate 1 image (version 1, asked for)
        r = httpx.post(live.url + "/v1/render", json={"coords": coords[:3].tolist()}, verify=TLS)
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"
        image = data.squares(coords[:1])[0]
        r = httpx.post(
            live.url + "/v1/locate",
            json={"images": [png_b64(image)], "model": "locate", "version": "1"},
            verify=TLS,
        )
        assert r.status_code == 200 and r.headers["x-model-version"] == "1", r.text
        # /v2 over HTTP: 2 items; gRPC: 1 item
        x = thttp.InferInput("coords", [2, 2], "FP32")
        x.set_data_from_numpy(coords[3:5])
        http.infer("render", [x], model_version="2")
        g = tgrpc.InferInput("coords", [1, 2], "FP32")
        g.set_data_from_numpy(coords[5:6])
        grpc.infer("render", [g], model_version="2")
        # the roundtrip ensemble over gRPC, 2 items: its steps count in render/2 and locate/2
        g = tgrpc.InferInput("coords", [2, 2], "FP32")
        g.set_data_from_numpy(coords[6:8])
        grpc.infer("roundtrip", [g])
        # failures: coordinates off the canvas, over each protocol (reason OTHER)
        bad = np.array([[100, 10]], np.float32)
        x = thttp.InferInput("coords", [1, 2], "FP32")
        x.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException):
            http.infer("render", [x], model_version="2")
        g = tgrpc.InferInput("coords", [1, 2], "FP32")
        g.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException):
            grpc.infer("render", [g], model_version="2")
        assert (
            httpx.post(live.url + "/v1/render", json={"coords": [[10, 99]]}, verify=TLS).status_code
            == 400
        )
        s = scrape(live.url)
        stats = stats_of(live.url)
        http.close()
        grpc.close()

    # every Triton family, declared as Triton declares it
    for name, kind in TRITON.items():
        assert s.types.get(name) == kind, name
    assert not [n for n in s.types if n.startswith("nv_") and n.endswith("_total")]
    # labels: model and version (and reason), for every served version
    served = set(stats)
    for name, kind in TRITON.items():
        if name.startswith("nv_cpu"):
            assert s.series(name) == [{}]
            continue
        sample = f"{name}_count" if kind == "histogram" else name
        keys = {"model", "version", "reason"} if "failure" in name else {"model", "version"}
        assert {frozenset(ls) for ls in s.series(sample)} == {frozenset(keys)}, name
        assert {(ls["model"], ls["version"]) for ls in s.series(sample)} >= served, name
    reasons = {ls["reason"] for ls in s.series("nv_inference_request_failure")}
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
    edges = {float(ls["le"]) for ls in s.series("nv_inference_first_response_histogram_ms_bucket")}
    assert {100.0, 500.0, 2000.0, 5000.0} <= edges  # Triton's default buckets among ours
    assert edges == {*map(float, FIRST_RESPONSE_BUCKETS_MS), float("inf")}

    # what was sent
    render = {"model": "render", "version": "2"}
    assert s.value("nv_inference_request_success", **render) == 3 + 1
    assert s.value("nv_inference_request_failure", **render, reason="OTHER") == 3
    for reason in ("REJECTED", "CANCELED", "BACKEND"):
        assert s.value("nv_inference_request_failure", **render, reason=reason) == 0
    assert s.value("nv_inference_count", **render) == 3 + 2 + 1 + 2
    assert 1 <= s.value("nv_inference_exec_count", **render) <= 4
    assert s.value("nv_inference_first_response_histogram_ms_count", **render) == 4
    roundtrip = {"model": "roundtrip", "version": "1"}
    assert s.value("nv_inference_request_success", **roundtrip) == 1
    assert s.value("nv_inference_count", **roundtrip) == 2
    assert s.value("nv_inference_exec_count", **roundtrip) == 1
    assert s.value("nv_inference_request_success", model="locate", version="2") == 1
    assert s.value("nv_inference_count", model="locate", version="2") == 2
    locate = {"model": "locate", "version": "1"}
    assert s.value("nv_inference_request_success", **locate) == 1
    assert s.value("nv_inference_count", **locate) == 1
    assert s.value("nv_inference_request_success", model="pixel", version="2") == 0
    for name in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model"):
        assert s.value(name, **render) == 0  # no CACHE_SIZE_BYTES: no cache
    # and what the statistics extension says, for every version
    assert_agrees_with_statistics(s, stats)

    # this service's request counters, per protocol
    def requests(protocol: str, status: str) -> float:
        return sum(
            v
            for n, ls, v in s.samples
            if n == "coordconv_requests_total"
            and ls["protocol"] == protocol
            and ls["status"] == status
            and ("Infer" in ls["route"] or "infer" in ls["route"] or "/v1/" in ls["route"])
        )

    assert requests("grpc", "OK") == 2 and requests("grpc", "INVALID_ARGUMENT") == 1
    assert requests("http", "200") == 3 and requests("http", "400") == 2

    # CPU gauges; GPU ones only where NVML finds a GPU
    assert 0 <= s.value("nv_cpu_utilization") <= 1
    total, used = s.value("nv_cpu_memory_total_bytes"), s.value("nv_cpu_memory_used_bytes")
    assert 0 < used < total
    gpu = [ls for n, ls, _ in s.samples if n.startswith("nv_gpu_")]
    assert all(set(ls) == {"gpu_uuid"} for ls in gpu)


def test_rejected_cancelled_and_pending() -> None:
    """A request past its queue timeout and one refused by a full queue are REJECTED, a client
    that hangs up while queued is CANCELED; the pending gauge counts queued requests."""
    body = b'{"coords": [[10, 10]]}'
    render = {"model": "render", "version": "2"}
    with live_server(
        ("render",), max_queue_size=4, request_timeout_s=1.5, max_queue_delay_us=3_000_000
    ) as live:
        results: dict[str, httpx.Response] = {}

        def waits() -> None:  # 3 items wait for a batch that does not fill, then time out
            results["timeout"] = httpx.post(
                live.url + "/v1/render", json={"coords": [[10, 10]] * 3}, timeout=30, verify=TLS
            )

        t = threading.Thread(target=waits)
        t.start()

        def queued(items: int) -> Callable[[], bool]:
            return lambda: metric(live.url, "coordconv_queue_items", model="render") >= items

        wait_for(queued(3))
        with socket.create_connection(("127.0.0.1", live.port)) as sock:  # 1 item, then gone
            sock.sendall(
                b"POST /v1/render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            wait_for(queued(4))
            during = scrape(live.url)
        full = httpx.post(
            live.url + "/v1/render", json={"coords": [[1, 1]] * 2}, timeout=30, verify=TLS
        )
        t.join()
        wait_for(  # the hang-up noticed
            lambda: metric(live.url, "nv_inference_request_failure", reason="CANCELED")
        )
        after = scrape(live.url)
        stats = stats_of(live.url)
    assert during.value("nv_inference_pending_request_count", **render) == 2
    assert during.value("coordconv_queue_items", **render) == 4
    assert results["timeout"].status_code == 503 and full.status_code == 503
    assert after.value("nv_inference_request_failure", **render, reason="REJECTED") == 2
    assert after.value("nv_inference_request_failure", **render, reason="CANCELED") == 1
    assert after.value("nv_inference_request_failure", **render, reason="OTHER") == 0
    assert after.value("nv_inference_pending_request_count", **render) == 0
    assert after.value("nv_inference_request_success", **render) == 0
    assert_agrees_with_statistics(after, stats)


class FakeModel:
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        if (batch < 0).any():
            raise RuntimeError("bad batch")
        return (batch * 2,)


def test_a_model_failure_is_backend_and_reasons_come_from_the_error() -> None:
    metrics = Metrics()
    stats = ModelStats("fake", "1")

    async def go() -> Scrape:
        b = Batcher(
            "fake",
            "1",
            FakeModel().run,
            ThreadPoolExecutor(1),
            Scheduling(
                max_batch_size=8,
                max_queue_delay_us=0,
                preferred_batch_sizes=(),
                max_queue_size=100,
                timeout_s=5.0,
                delay_on_timeout=False,
                instances=1,
                request_items=8,
            ),
            metrics,
            stats,
        )
        b.start()
        for x in (np.ones((2, 2), np.float32), -np.ones((1, 2), np.float32)):
            start = time.perf_counter_ns()
            try:  # as the data plane counts a request
                await b.infer(x)
            except BaseException:
                stats.request_done(False, time.perf_counter_ns() - start)
            else:
                stats.request_done(True, time.perf_counter_ns() - start)
        scraped = Scrape(metrics.exposition().decode())
        await b.stop()
        return scraped

    s = asyncio.run(go())
    assert stats.success.count == 1 and stats.fail.count == 1
    fake = {"model": "fake", "version": "1"}
    assert s.value("nv_inference_request_failure", **fake, reason="BACKEND") == 1
    assert s.value("nv_inference_request_failure", **fake, reason="OTHER") == 0
    assert s.value("nv_inference_request_success", **fake) == 1
    assert s.value("nv_inference_count", **fake) == 2
    # the version stopped: its Triton series are gone, as in Triton (and as its statistics)
    s = Scrape(metrics.exposition().decode())
    assert s.series("nv_inference_request_success") == []
    assert s.series("nv_inference_request_failure") == []
    assert s.value("coordconv_inference_count_total", **fake) == 2

    assert failure_reason(asyncio.CancelledError()) == "CANCELED"
    assert failure_reason(ClientClosedRequest("gone")) == "CANCELED"
    assert failure_reason(InferenceFailed("x")) == "BACKEND"
    assert failure_reason(Unavailable("shutting down")) == "OTHER"
    assert failure_reason(ValueError("x")) == "OTHER"
    assert failure_reason(None) == "OTHER"


def test_series_follow_loads_reloads_and_unloads() -> None:
    with live_server(model_control_mode="explicit", load_model=["render"]) as live:
        tc = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
        x = thttp.InferInput("coords", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[10, 10]], np.float32))
        for _ in range(3):
            tc.infer("render", [x], model_version="2")
        before = scrape(live.url)
        tc.load_model("render")  # the same files: nothing reloads, nothing restarts
        same = scrape(live.url)
        config = tc.get_model_config("render")
        config["dynamic_batching"]["max_queue_delay_microseconds"] = 600
        tc.load_model("render", config=json.dumps(config))  # new versions: statistics restart
        after_reload = scrape(live.url)
        stats_reload = stats_of(live.url)
        tc.infer("render", [x], model_version="2")
        after_one = scrape(live.url)
        stats_one = stats_of(live.url)
        tc.unload_model("render")
        wait_for(
            lambda: (
                not [
                    ls
                    for ls in scrape(live.url).series("nv_inference_request_success")
                    if ls.get("model") == "render"
                ]
            )
        )
        gone = scrape(live.url)
        tc.close()
    render = {"model": "render", "version": "2"}
    assert before.value("nv_inference_request_success", **render) == 3
    assert same.value("nv_inference_request_success", **render) == 3
    assert after_reload.value("nv_inference_request_success", **render) == 0
    assert_agrees_with_statistics(after_reload, stats_reload, reloaded=True)
    assert after_one.value("nv_inference_request_success", **render) == 1
    assert_agrees_with_statistics(after_one, stats_one, reloaded=True)
    for name in TRITON:
        if not name.startswith("nv_cpu"):
            assert not [ls for ls in gone.series(name) if ls.get("model") == "render"], name
    # this service's own counters keep counting across reloads
    assert gone.value("coordconv_inference_count_total", **render) == 4


class FakeNvml:
    """pynvml's calls that the collector makes, for two GPUs; the second has no power reading."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy = [1_000_000, 5_000]  # millijoules

    def nvmlInit(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=[37, 0][h], memory=5)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(total=80 << 30, used=[3 << 30, 0][h], free=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 123_456  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:  # noqa: N802
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:  # noqa: N802
        return self.energy[h]


def write_proc(root: Path, busy: tuple[int, ...], memory_kb: tuple[int, int]) -> None:
    user, nice, system, idle, iowait, irq, softirq, steal = busy
    (root / "stat").write_text(
        f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\n"
        "cpu0 1 1 1 1 1 1 1 1 0 0\n"
    )
    (root / "meminfo").write_text(
        f"MemTotal:       {memory_kb[0]} kB\nMemFree:         1 kB\n"
        f"MemAvailable:   {memory_kb[1]} kB\n"
    )


def test_cpu_and_gpu_gauges(tmp_path: Path) -> None:
    write_proc(tmp_path, (100, 0, 50, 800, 50, 0, 0, 0), (16_000_000, 12_000_000))
    nvml = FakeNvml()
    collector = SystemCollector(proc=tmp_path, gpu=Gpus(nvml))
    # since the last reading: busy +150 (user 60, system 30, irq 10, softirq 20, steal 30),
    # idle +450 (idle 400, iowait 50): Triton's 150 / 600
    write_proc(tmp_path, (160, 0, 80, 1200, 100, 10, 20, 30), (16_000_000, 10_000_000))
    nvml.energy = [1_600_000, 5_000]
    families = {f.name: f for f in collector.collect()}
    assert families["nv_cpu_utilization"].samples[0].value == pytest.approx(150 / 600)
    assert families["nv_cpu_memory_total_bytes"].samples[0].value == 16_000_000 * 1024
    assert families["nv_cpu_memory_used_bytes"].samples[0].value == 6_000_000 * 1024

    def by_gpu(name: str) -> dict[str, float]:
        return {s.labels["gpu_uuid"]: s.value for s in families[name].samples}

    a, b = (f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd" for i in (0, 1))
    assert by_gpu("nv_gpu_utilization") == {a: 0.37, b: 0.0}
    assert by_gpu("nv_gpu_memory_total_bytes") == {a: 80 << 30, b: 80 << 30}
    assert by_gpu("nv_gpu_memory_used_bytes") == {a: 3 << 30, b: 0}
    assert by_gpu("nv_gpu_power_usage") == {a: pytest.approx(123.456)}  # b: not supported
    assert by_gpu("nv_gpu_power_limit") == {a: 700.0}
    assert by_gpu("nv_energy_consumption") == {a: 600.0, b: 0.0}  # joules since start

    # in the exposition: Triton's types (energy is a counter), no GPU series without NVML
    metrics = Metrics()
    metrics.registry.unregister(metrics.system)
    metrics.system = collector
    metrics.registry.register(collector)
    s = Scrape(metrics.exposition().decode())
    assert s.types["nv_energy_consumption"] == "counter"
    assert s.types["nv_gpu_utilization"] == "gauge"
    assert s.value("nv_gpu_power_usage", gpu_uuid=a) == pytest.approx(123.456)
    bare = Scrape(Metrics().exposition().decode())
    assert "nv_cpu_utilization" in bare.types
    no_gpu = SystemCollector(proc=tmp_path, gpu=None)
    assert not [f for f in no_gpu.collect() if f.name.startswith("nv_gpu")]
    missing = SystemCollector(proc=tmp_path / "absent", gpu=None)
    assert list(missing.collect()) == []  # not Linux: no CPU series, as in Triton


def test_cache_metrics_follow_the_statistics() -> None:
    with live_server(("render",), cache_size_bytes=1 << 24) as live:
        config = httpx.get(live.url + "/v2/models/render/config", verify=TLS).json()
        # The shipped render config enables the cache; were that to change, this test would
        # check nothing: fail, and serve it a config that does.
        assert config.get("response_cache", {}).get("enable"), (
            "models/render/config.pbtxt no longer enables the response cache, which this test needs"
        )
        for _ in range(3):  # a miss, then hits
            r = httpx.post(
                live.url + "/v1/render", json={"coords": [[10, 10], [20, 30]]}, verify=TLS
            )
            assert r.status_code == 200
        s = scrape(live.url)
        stats = stats_of(live.url)
    render = {"model": "render", "version": "2"}
    phases = stats[("render", "2")]["inference_stats"]
    assert phases["cache_hit"]["count"] > 0 and phases["cache_miss"]["count"] > 0
    assert s.value("nv_cache_num_hits_per_model", **render) == phases["cache_hit"]["count"]
    assert s.value("nv_cache_num_misses_per_model", **render) == phases["cache_miss"]["count"]
    assert s.value("nv_cache_hit_duration_per_model", **render) == pytest.approx(
        phases["cache_hit"]["ns"] / 1000
    )
    assert s.value("nv_inference_request_success", **render) == 3
    assert_agrees_with_statistics(s, stats)


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "coordconv.json"
FAMILY = re.compile(r"\b((?:nv|coordconv)_[a-z0-9_]+)")
PROMETHEUS_LABELS = {"instance", "job"}  # added by the scrape


def test_the_grafana_dashboard_queries_only_what_metrics_exposes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.metrics import system

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0
    targets = [t for p in panels for t in p.get("targets", [])]
    assert targets and all(t["datasource"]["uid"] == "${datasource}" for t in targets)
    exprs = [t["expr"] for t in targets]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    wanted = set(FAMILY.findall(" ".join(exprs)))
    # what the issue asks the dashboard for: rates, failures, queue and compute time, batch
    # size, pending, CPU and GPU
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",
        "nv_inference_pending_request_count",
        "nv_cpu_utilization",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
    ):
        assert name in wanted, name

    # NVML stood in for, so that the GPU families are there as on a GPU machine
    monkeypatch.setattr(system, "_gpus", Gpus(FakeNvml()))
    monkeypatch.setattr(system, "_gpus_tried", True)
    with live_server() as live:
        assert (
            httpx.post(live.url + "/v1/render", json={"coords": [[5, 5]]}, verify=TLS).status_code
            == 200
        )
        s = scrape(live.url)
    exposed = {n for n, _, _ in s.samples}
    assert wanted - exposed == set()
    for t in targets:  # every label a query groups, filters or names its series by exists
        labels = {k for n, ls, _ in s.samples if n in FAMILY.findall(t["expr"]) for k in ls}
        labels |= PROMETHEUS_LABELS
        used = {
            x.strip()
            for group in re.findall(r"by \(([^)]*)\)", t["expr"])
            for x in group.split(",")
        }
        used |= set(re.findall(r"(\w+)=~?\"", t["expr"]))
        used |= set(re.findall(r"\{\{(\w+)\}\}", t.get("legendFormat", "")))
        assert used <= labels, (t["expr"], used - labels)
