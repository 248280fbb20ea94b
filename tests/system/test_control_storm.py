"""What model control costs and what it cannot break, against a real `coordconv serve` process:
20 load/unload cycles of every shipped model give back their memory and threads, and a storm of
load, unload and override calls from 3 threads beside inference from 6 for 30 s leaves every
answer right, no 5xx, and /healthz fast. The figures go to docs/reliability.md."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as triton

from tests.helpers import MODELS, TLS, serve_process

PROBE = """
import sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
stop = time.monotonic() + seconds
with httpx.Client(base_url=url, timeout=10) as c:
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        ok = c.get("/healthz").status_code == 200
        print(time.perf_counter() - t0 if ok else -1, flush=True)
        time.sleep(0.05)
"""
NAMES = sorted(p.name for p in MODELS.iterdir() if (p / "config.pbtxt").exists())


def proc_status(pid: int) -> tuple[int, int]:
    """(RSS in KiB, threads) of a process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


@contextmanager
def explicit_server() -> Iterator[tuple[int, str]]:
    # Logs at warning: nobody reads the pipe while the test runs, and a full pipe blocks.
    with serve_process(
        model_control_mode="explicit", load_model="*", grpc_port=0, log_level="warning"
    ) as (proc, url):
        yield proc.pid, url


def settle(pid: int, seconds: float = 3.0) -> tuple[int, int]:
    time.sleep(seconds)
    return proc_status(pid)


def test_unloading_gives_back_memory_and_threads() -> None:
    with explicit_server() as (pid, url):
        tc = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
        for name in NAMES:  # the first cycle: every arena and cache at its working size
            tc.unload_model(name)
            tc.load_model(name)
        rss0, threads0 = settle(pid)
        peak_threads = threads0
        for _ in range(20):
            for name in NAMES:
                tc.unload_model(name)
                tc.load_model(name)
            peak_threads = max(peak_threads, proc_status(pid)[1])
        rss, threads = settle(pid)
        figures = {
            "cycles": 20,
            "models": len(NAMES),
            "rss_after_first_mib": round(rss0 / 1024, 1),
            "rss_after_20_mib": round(rss / 1024, 1),
            "threads_after_first": threads0,
            "threads_after_20": threads,
            "threads_peak": peak_threads,
        }
        print("unload figures:", json.dumps(figures))
        assert rss <= rss0 * 1.10, figures
        assert threads <= threads0 * 1.10, figures


def expected_images(points: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for version in ("1", "2"):
        s = ort.InferenceSession(str(MODELS / "render" / version / "model.onnx"))
        out[version] = s.run(None, {"coords": points})[0]
    return out


def test_a_storm_of_control_calls_beside_inference_breaks_nothing() -> None:
    seconds = float(os.environ.get("STORM_SECONDS", "30"))
    points = np.array([[10, 20], [33, 40], [5.5, 60]], np.float32)
    want = expected_images(points)
    with explicit_server() as (_, url):
        base = triton.InferenceServerClient(url.removeprefix("http://"))
        only_1 = base.get_model_config("render")
        only_1["version_policy"] = {"specific": {"versions": [1]}}
        override = json.dumps(only_1)
        base.close()
        stop = time.monotonic() + seconds
        counts = {"infer": 0, "wrong": 0, "5xx": 0, "503": 0, "404": 0, "control": 0}
        other: list[str] = []
        lock = threading.Lock()

        def control(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=120, verify=TLS) as c:
                while time.monotonic() < stop:
                    name = rng.choice(["render", "locate", "pixel"])
                    op = rng.choice(["load", "unload", "override"])
                    if op == "override" and name == "render":
                        body = {"parameters": {"config": override}}
                        r = c.post(f"/v2/repository/models/{name}/load", json=body)
                    else:
                        verb = "unload" if op == "unload" else "load"
                        r = c.post(f"/v2/repository/models/{name}/{verb}")
                    with lock:
                        counts["control"] += 1
                        if r.status_code >= 500:
                            counts["5xx"] += 1
                        elif r.status_code not in (200, 404):
                            other.append(f"{op} {name}: {r.status_code} {r.text[:200]}")

        def infer() -> None:
            with httpx.Client(base_url=url, timeout=120, verify=TLS) as c:
                while time.monotonic() < stop:
                    r = c.post("/v1/render", json={"coords": points.tolist(), "format": "array"})
                    with lock:
                        counts["infer"] += 1
                        if r.status_code == 200:
                            got = np.asarray(r.json()["images"], np.float32)
                            version = r.headers["x-model-version"]
                            if not np.allclose(got, want[version], atol=1e-5):
                                counts["wrong"] += 1
                        elif r.status_code >= 500 and r.status_code != 503:
                            counts["5xx"] += 1
                        elif r.status_code in (503, 404):  # loading, or unloaded: said so
                            counts[str(r.status_code)] += 1
                        else:
                            other.append(f"infer: {r.status_code} {r.text[:200]}")

        # /healthz measured from a process of its own: this one's ten threads share a GIL.
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, url, str(seconds)], stdout=subprocess.PIPE, text=True
        )

        threads = [threading.Thread(target=control, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=infer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out, _ = probe.communicate(timeout=60)
        health = [float(x) for x in out.split()]
        assert health and all(x >= 0 for x in health), out[-500:]
        p99 = statistics.quantiles(health, n=100)[98] * 1000
        figures = {**counts, "seconds": seconds, "healthz_p99_ms": round(p99, 1)}
        print("storm figures:", json.dumps(figures))
        assert counts["wrong"] == 0 and counts["5xx"] == 0 and not other, (figures, other[:5])
        assert counts["infer"] > 100 and counts["control"] > 20, figures
        # The goal is p99 < 100 ms (docs/reliability.md has the figure); a shared CI machine gets
        # slack here so the test checks correctness, not the machine.
        assert p99 < 250, figures
