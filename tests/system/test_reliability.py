"""Overload, graceful shutdown and security, against `coordconv serve` processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, TLS, serve_process
from training import data, metrics


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def until_queued(url: str, items: int, timeout_s: float) -> None:
    """Wait until `items` render requests wait in the queue (the server accepted them all), so a
    signal sent next meets them in flight, however slowly this machine set up the clients."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(verify=TLS) as client:
        while time.monotonic() < deadline:
            text = (await client.get(url + "/metrics")).text
            queued = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('coordconv_queue_items{model="render"')
            )
            if queued >= items:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"only {queued:.0f} of {items} requests were queued after {timeout_s} s")


async def burst(url: str, coords: np.ndarray) -> list[tuple[int, dict, float, dict]]:
    limits = httpx.Limits(max_connections=len(coords))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, verify=TLS) as c:

        async def one(p: list[float]) -> tuple[int, dict, float, dict]:
            t0 = time.monotonic()
            r = await c.post("/v1/render", json={"coords": [p], "format": "array"})
            return r.status_code, dict(r.headers), time.monotonic() - t0, r.json()

        return await asyncio.gather(*[one(p) for p in coords.tolist()])


@pytest.mark.serial  # timed: runs alone, after the parallel pass
def test_a_burst_of_ten_times_capacity_is_shed_with_503_and_the_rest_is_right() -> None:
    capacity = 16  # items the queue holds
    coords = data.centres()[
        np.random.default_rng(2).choice(3136, 10 * capacity + 40, replace=False)
    ]
    # Accepted requests wait 5 s for a batch that never fills; refusals must come long before
    # (the client's own work on 200 requests takes seconds on a busy 2-core machine).
    with serve_process(
        ("render",), max_queue_size=capacity, max_queue_delay_us=5_000_000, max_batch_size=64
    ) as (proc, url):
        before = rss_kib(proc.pid)
        results = asyncio.run(burst(url, coords))
        after_first = rss_kib(proc.pid)
        results += asyncio.run(burst(url, coords))  # and again: nothing accumulates
        after = rss_kib(proc.pid)
        assert proc.poll() is None  # still up
        assert httpx.get(url + "/readyz", verify=TLS).status_code == 200
    ok = [(i, r) for i, r in enumerate(results) if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) + len(shed) == len(results)  # nothing else, no 500
    assert len(shed) >= 8 * capacity
    assert all(h.get("retry-after") for _, h, _, _ in shed)
    # Refused at once, not after queueing: every 503 arrived before the accepted requests, which
    # wait 5 s for their batch. (Absolute times would measure the client's 200 connections.)
    shed_times = [t for _, _, t, _ in shed]
    accepted_times = [r[2] for _, r in ok]
    assert min(accepted_times) >= 4.9
    assert max(shed_times) < min(accepted_times)
    for i, (_, _, _, body) in ok:
        image = np.asarray(body["images"][0], np.float32)[None]
        truth = data.squares(coords[i % len(coords)][None])
        assert metrics.iou(image, truth)[0] >= 0.9
    assert after - before < 50_000, f"RSS grew {before} -> {after_first} -> {after} KiB"


def test_sigterm_drains_http_and_grpc_together_and_exits_0() -> None:
    import tritonclient.grpc.aio as tgrpc

    coords = data.centres()[:12]
    with serve_process(("render",), max_queue_delay_us=4_000_000, grace_s=10) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        grpc_port = proc.grpc_port  # type: ignore[attr-defined]

        async def via_grpc(p: np.ndarray) -> np.ndarray:
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                x = tgrpc.InferInput("coords", [1, 2], "FP32")
                x.set_data_from_numpy(p[None].astype(np.float32))
                return (await client.infer("render", [x])).as_numpy("image")[0]
            finally:
                await client.close()

        async def scenario() -> tuple[list[int], list[np.ndarray], str]:
            http = asyncio.ensure_future(burst(url, coords))
            grpc_calls = asyncio.gather(*[via_grpc(p) for p in coords])
            await until_queued(url, 2 * len(coords), timeout_s=3.5)  # waiting for their batch
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            try:
                await asyncio.open_connection("127.0.0.1", port)
                refused = "accepted"
            except OSError:
                refused = "refused"
            results = await http
            return [r[0] for r in results], await grpc_calls, refused

        t0 = time.monotonic()
        statuses, grpc_images, refused = asyncio.run(scenario())
        proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
        out = proc.all_output()  # type: ignore[attr-defined]
    assert statuses == [200] * len(coords)  # every accepted HTTP request completed
    assert metrics.iou(np.stack(grpc_images), data.squares(coords)).min() >= 0.9  # and gRPC's
    assert refused == "refused"  # new connections are not accepted while draining
    assert proc.returncode == 0, out
    assert elapsed < 10


def test_v2_routes_need_the_key_and_errors_leak_nothing() -> None:
    key = "very-secret-token-123"
    with serve_process(api_key=key) as (proc, url):
        headers = {"Authorization": f"Bearer {key}"}
        body = {"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        for method, path in [
            ("GET", "/v2"),
            ("GET", "/v2/models/render"),
            ("GET", "/v2/models/render/ready"),
            ("GET", "/v2/models/render/config"),
            ("POST", "/v2/models/render/infer"),
            ("POST", "/v2/models/render/versions/1/infer"),
        ]:
            r = httpx.request(
                method, url + path, json=body if method == "POST" else None, verify=TLS
            )
            assert r.status_code == 401, path
            assert "error" in r.json()
            ok = httpx.request(
                method,
                url + path,
                json=body if method == "POST" else None,
                headers=headers,
                verify=TLS,
            )
            assert ok.status_code == 200, (path, ok.text)
        assert httpx.get(url + "/v2/health/live", verify=TLS).status_code == 200
        # Error bodies carry no traceback and no server paths.
        for r in (
            httpx.post(url + "/v1/render", content=b"{bad", headers=headers, verify=TLS),
            httpx.post(
                url + "/v1/locate",
                content=b"\x93NUMPY\x01\x00garbage",
                headers={**headers, "Content-Type": "application/x-npy"},
                verify=TLS,
            ),
            httpx.post(
                url + "/v2/models/render/infer", content=b"[1]", headers=headers, verify=TLS
            ),
        ):
            text = r.text
            assert 400 <= r.status_code < 500
            assert "Traceback" not in text and str(ROOT) not in text and "site-packages" not in text
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        out = proc.all_output()  # type: ignore[attr-defined]
    assert key not in out  # the key never reaches the logs
    assert "POST /v1/render 400" in out


def test_json_logs_are_one_object_per_line_with_the_request_id() -> None:
    with serve_process(("render",), log_format="json") as (proc, url):
        httpx.get(url + "/healthz", headers={"X-Request-ID": "trace-42"}, verify=TLS)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        out = proc.all_output()  # type: ignore[attr-defined]
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records and len(records) == len([ln for ln in out.splitlines() if ln.strip()])
    access = [r for r in records if r.get("request_id") == "trace-42"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/healthz"


@pytest.mark.parametrize("limit", [2])
def test_concurrency_limit_answers_503_with_retry_after(limit) -> None:
    coords = data.centres()[:20]
    with serve_process(("render",), max_concurrency=limit, max_queue_delay_us=300_000) as (_, url):
        results = asyncio.run(burst(url, coords))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 10
    assert all(r[1].get("retry-after") == "1" for r in results if r[0] == 503)
    assert any("too many requests in flight" in r[3].get("detail", "") for r in results)


def test_requests_still_queued_when_the_drain_runs_out_get_503_not_500() -> None:
    coords = data.centres()[:6]
    # Batches wait 20 s to fill, far past GRACE_S = 2: nothing queued can finish in time.
    with serve_process(
        ("render",), max_queue_delay_us=20_000_000, limit_queue_delay_us=30_000_000, grace_s=2
    ) as (proc, url):

        async def scenario() -> list[tuple[int, dict, float, dict]]:
            task = asyncio.ensure_future(burst(url, coords))
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            return await task

        results = asyncio.run(scenario())
        proc.wait(timeout=15)
        out = proc.all_output()  # type: ignore[attr-defined]
    assert [r[0] for r in results] == [503] * len(coords), out
    assert all(r[1].get("retry-after") == "1" for r in results)
    assert all("shutting down" in r[3]["detail"] for r in results)
    assert proc.returncode == 0 and "Traceback" not in out
