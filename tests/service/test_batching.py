"""Dynamic batching: own rows back, real batches under concurrency, bounded queue, timeouts,
isolation of failures, dropping requests whose client left."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from service.errors import InferenceFailed, PayloadTooLarge, Unavailable
from service.metrics import Metrics
from service.models.batcher import Batcher
from service.models.config import Scheduling
from service.models.statistics import ModelStats
from tests.helpers import TLS, live_server, metric, wait_for
from training import data, metrics


def counter(text: str, name: str, model: str, version: str = "2") -> float:
    m = re.search(rf'^{name}\{{model="{model}",version="{version}"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def concurrent_renders(url: str, coords: np.ndarray) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, verify=TLS) as c:
        return await asyncio.gather(
            *[
                c.post("/v1/render", json={"coords": [p], "format": "array"})
                for p in coords.tolist()
            ]
        )


def test_concurrent_single_item_requests_are_batched_and_get_their_own_rows() -> None:
    coords = data.centres()[np.random.default_rng(0).choice(3136, 32, replace=False)]
    with live_server(("render",), max_queue_delay_us=50_000) as live:
        answers = asyncio.run(concurrent_renders(live.url, coords))
        text = httpx.get(live.url + "/metrics", verify=TLS).text
    images = np.stack([np.asarray(r.json()["images"][0], np.float32) for r in answers])
    assert all(r.status_code == 200 for r in answers)
    ious = metrics.iou(images, data.squares(coords))
    assert ious.min() >= 0.95  # each request got its own square, not a neighbour's
    items = counter(text, "coordconv_inference_count_total", "render")
    calls = counter(text, "coordconv_execution_count_total", "render")
    assert items == 32
    assert items / calls >= 8, f"mean batch size {items / calls:.1f}"


def test_batching_off_runs_one_item_per_call() -> None:
    coords = data.centres()[:8]
    with live_server(("render",), max_queue_delay_us=0, max_batch_size=1) as live:
        answers = asyncio.run(concurrent_renders(live.url, coords))
        text = httpx.get(live.url + "/metrics", verify=TLS).text
    assert all(r.status_code == 200 for r in answers)
    assert counter(text, "coordconv_execution_count_total", "render") == 8


def test_a_full_queue_answers_503_with_retry_after_at_once() -> None:
    with live_server(("render",), max_queue_size=4, max_queue_delay_us=2_000_000) as live:
        results: dict[str, Any] = {}

        def first() -> None:  # 4 items wait 2 s for a batch that never fills
            results["first"] = httpx.post(
                live.url + "/v1/render", json={"coords": [[10, 10]] * 4}, timeout=30, verify=TLS
            )

        t = threading.Thread(target=first)
        t.start()
        wait_for(lambda: metric(live.url, "coordconv_queue_items", model="render") >= 4)
        start = time.monotonic()
        r = httpx.post(live.url + "/v1/render", json={"coords": [[20, 20]]}, timeout=30, verify=TLS)
        elapsed = time.monotonic() - start
        t.join()
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "overloaded" in r.json()["detail"]
    assert elapsed < 1.5  # the queued request waits 2 s; this one is refused before that
    assert results["first"].status_code == 200  # the queued request still completes


def test_a_request_queued_past_the_timeout_gets_503() -> None:
    with live_server(("render",), request_timeout_s=0.3, max_queue_delay_us=3_000_000) as live:
        r = httpx.post(live.url + "/v1/render", json={"coords": [[10, 10]]}, timeout=30, verify=TLS)
    assert r.status_code == 503
    assert "waited more than 0.3 s" in r.json()["detail"]
    assert "retry-after" in r.headers


class FakeModel:
    """Doubles its input; fails on any batch holding a negative number."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls.append(len(batch))
        if (batch < 0).any():
            raise RuntimeError("bad batch")
        return (batch * 2,)


def make_batcher(model: FakeModel, **kw: Any) -> Batcher:
    args: dict[str, Any] = {
        "max_batch_size": 8,
        "max_queue_delay_us": 20_000,
        "preferred_batch_sizes": (),
        "max_queue_size": 100,
        "timeout_s": 5.0,
        "delay_on_timeout": False,
        "instances": 1,
        **kw,
    }
    args.setdefault("request_items", args["max_batch_size"])
    return Batcher(
        "fake",
        "1",
        model.run,
        ThreadPoolExecutor(2),
        Scheduling(**args),
        Metrics(),
        ModelStats("fake", "1"),
    )


def test_a_failing_request_does_not_fail_its_neighbours() -> None:
    async def go() -> list[Any]:
        model = FakeModel()
        # A full batch goes at once; the long window keeps a busy machine from splitting it.
        b = make_batcher(model, max_batch_size=6, max_queue_delay_us=5_000_000)
        b.start()
        xs = [np.full((1, 2), i, np.float32) for i in range(5)] + [np.full((1, 2), -1, np.float32)]
        out = await asyncio.gather(*[b.infer(x) for x in xs], return_exceptions=True)
        await b.stop()
        return [out, model.calls]

    out, calls = asyncio.run(go())
    for i in range(5):
        np.testing.assert_array_equal(out[i][0], np.full((1, 2), 2 * i))
    assert isinstance(out[5], InferenceFailed)
    assert calls[0] == 6  # one batch first, then one call per request to isolate the failure


class HungryModel(FakeModel):
    """Runs out of memory as onnxruntime says it, on any batch of more than one row."""

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                "requested buffer of size 68719476736"
            )
        if (batch > 100).any():
            raise MemoryError
        return (batch * 2,)


def test_running_out_of_memory_is_a_413_or_a_503_never_a_500() -> None:
    async def go() -> list[Any]:
        b = make_batcher(HungryModel(), max_queue_delay_us=0)
        b.start()
        out = await asyncio.gather(
            b.infer(np.ones((4, 2), np.float32)),
            b.infer(np.full((1, 2), 500, np.float32)),
            return_exceptions=True,
        )
        await b.stop()
        return list(out)

    big, single = asyncio.run(go())
    assert isinstance(big, PayloadTooLarge) and big.status_code == 413
    assert "could not allocate the memory for 4 items at once" in big.message
    assert isinstance(single, Unavailable) and single.headers == {"Retry-After": "1"}


def test_large_requests_are_split_into_max_batch_calls_and_reassembled() -> None:
    async def go() -> tuple[np.ndarray, list[int]]:
        model = FakeModel()
        b = make_batcher(model, max_queue_delay_us=0)
        b.start()
        x = np.arange(40, dtype=np.float32).reshape(20, 2)
        (y,) = await b.infer(x)
        await b.stop()
        return y, model.calls

    y, calls = asyncio.run(go())
    np.testing.assert_array_equal(y, np.arange(40).reshape(20, 2) * 2)
    assert calls == [8, 8, 4]


def test_a_request_whose_client_left_is_dropped_before_it_runs() -> None:
    async def go() -> tuple[list[int], int]:
        model = FakeModel()
        b = make_batcher(model, max_queue_delay_us=200_000)
        b.start()

        # The client disconnects right away: its request's task is cancelled (HTTP and gRPC).
        gone = asyncio.ensure_future(b.infer(np.ones((3, 2), np.float32)))
        await asyncio.sleep(0)  # queued
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        (kept,) = await b.infer(np.ones((1, 2), np.float32))
        await b.stop()
        return model.calls, int(kept.sum())

    calls, total = asyncio.run(go())
    assert calls == [1]  # only the request that stayed ran
    assert total == 4


def test_queue_limit_is_counted_in_items() -> None:
    async def go() -> None:
        b = make_batcher(FakeModel(), max_queue_size=5, max_queue_delay_us=500_000)
        b.start()
        first = asyncio.ensure_future(b.infer(np.ones((4, 2), np.float32)))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="overloaded"):
            await b.infer(np.ones((2, 2), np.float32))
        assert (await first)[0].shape == (4, 2)
        await b.stop()

    asyncio.run(go())


def test_a_client_that_hangs_up_over_http_is_never_run() -> None:
    import socket

    body = b'{"coords": [[10, 10], [20, 20], [30, 30]]}'
    with live_server(("render",), max_queue_delay_us=1_000_000) as live:
        with socket.create_connection(("127.0.0.1", live.port)) as s:
            s.sendall(
                b"POST /v1/render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            # queued, waiting for its batch to fill
            wait_for(lambda: metric(live.url, "coordconv_queue_items", model="render") >= 3)
        wait_for(
            lambda: (
                'route="/v1/render",status="499"'
                in httpx.get(live.url + "/metrics", verify=TLS).text
            )
        )
        # A request sent after the hang-up runs in a batch no earlier than the hung-up one would
        # have: once it is answered, the hung-up rows had their chance to run.
        r = httpx.post(live.url + "/v1/render", json={"coords": [[40, 40]]}, timeout=30, verify=TLS)
        assert r.status_code == 200
        text = httpx.get(live.url + "/metrics", verify=TLS).text
    assert counter(text, "coordconv_inference_count_total", "render") == 1  # its row only


class SlowFirstRows(FakeModel):
    """Slow for the batch holding row value 0: later batches of the same request finish first."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[float] = []  # each call's first value, in the order calls finish

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        if (batch == 0).any():
            time.sleep(0.2)
        out = super().run(batch)
        self.finished.append(float(batch[0, 0]))
        return out


def test_a_request_split_over_parallel_calls_gets_its_rows_in_order() -> None:
    async def go() -> tuple[np.ndarray, SlowFirstRows]:
        model = SlowFirstRows()
        b = make_batcher(model, max_queue_delay_us=0, instances=2)
        b.start()
        x = np.arange(40, dtype=np.float32).reshape(20, 2)
        (y,) = await b.infer(x)
        await b.stop()
        return y, model

    y, model = asyncio.run(go())
    assert sorted(model.calls) == [4, 8, 8]
    assert model.finished[-1] == 0  # the first rows' call finished last
    np.testing.assert_array_equal(y, np.arange(40).reshape(20, 2) * 2)


def test_batches_run_back_to_back_while_the_event_loop_is_busy() -> None:
    """The next batch is taken where onnxruntime runs, not on the event loop: while the loop is
    blocked (writing answers, parsing bodies), every queued batch still runs."""

    async def go() -> tuple[list[int], list[int]]:
        model = FakeModel()
        b = make_batcher(model, max_queue_delay_us=0)
        b.start()
        xs = [np.full((8, 2), i, np.float32) for i in range(3)]
        tasks = [asyncio.ensure_future(b.infer(x)) for x in xs]
        await asyncio.sleep(0)  # each request is queued
        time.sleep(0.5)  # the loop is busy and cannot dispatch anything
        ran_meanwhile = list(model.calls)
        out = await asyncio.gather(*tasks)
        await b.stop()
        return ran_meanwhile, [int(y[0][0, 0]) for y in out]

    ran, firsts = asyncio.run(go())
    assert ran == [8, 8, 8]
    assert firsts == [0, 2, 4]
