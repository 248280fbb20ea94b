"""The response cache (`response_cache { enable: true }` in config.pbtxt, CACHE_SIZE_BYTES): the
LRU and its byte bound on its own; then through a live server with the real `tritonclient.http`
and `tritonclient.grpc`: hits and misses counted in Triton's statistics extension, per item
(repeated points inside one batch hit), answers equal to the model's own, one cache for /v1, /v2
and gRPC, no answer of another model or version, a reload or unload empties a version's entries,
and render version 2 keyed by the rounded point (its graph rounds first), answers unchanged."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as triton

from service.models.cache import ENTRY_OVERHEAD, ResponseCache
from service.models.statistics import ModelStats
from tests.helpers import MODELS, TLS, live_server, wait_for

IMAGE_BYTES = 64 * 64 * 4
ENTRY = IMAGE_BYTES + 8 + ENTRY_OVERHEAD  # a render answer for one point


def reference(name: str, version: str, coords: np.ndarray) -> np.ndarray:
    path = MODELS / name / version / "model.onnx"
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"coords": coords.astype(np.float32)})[0]


# The cache on its own


def rows(value: float, size: int = 4) -> tuple[np.ndarray, ...]:
    return (np.full(size, value, np.float32),)


def test_lru_keeps_within_its_bytes_and_drops_the_least_recently_used() -> None:
    entry = ENTRY_OVERHEAD + 400 + 8
    cache = ResponseCache(3 * entry)
    owner = cache.register()
    keys = [(owner, (), bytes([i]) * 8) for i in range(5)]
    for k in keys[:3]:
        cache.put(k, rows(1.0, 100))
    assert len(cache) == 3 and cache.bytes == 3 * entry
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], rows(2.0, 100))
    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) is not None and cache.get(keys[3]) is not None
    assert cache.bytes <= cache.capacity and cache.evictions == 1
    cache.put(keys[4], rows(3.0, 10_000))  # larger than the whole cache: not kept
    assert cache.get(keys[4]) is None and cache.bytes <= cache.capacity


def test_a_purged_owner_loses_its_entries_and_stores_nothing_more() -> None:
    cache = ResponseCache(1 << 20)
    a, b = cache.register(), cache.register()
    cache.put((a, (), b"x"), rows(1.0))
    cache.put((b, (), b"x"), rows(2.0))
    cache.clear(a)  # a reload: empty, but still caching
    assert cache.get((a, (), b"x")) is None
    cache.put((a, (), b"y"), rows(1.0))
    assert cache.get((a, (), b"y")) is not None
    cache.purge(a)  # closed
    cache.put((a, (), b"z"), rows(1.0))
    assert cache.get((a, (), b"y")) is None and cache.get((a, (), b"z")) is None
    other = cache.get((b, (), b"x"))
    assert other is not None and other[0][0] == 2.0  # another owner's entry is untouched
    assert len(cache) == 1


def test_infer_computes_each_distinct_missing_row_once_and_counts_per_item() -> None:
    cache = ResponseCache(1 << 20)
    owner = cache.register()
    stats = ModelStats("m", "1")
    calls: list[np.ndarray] = []

    async def compute(xs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        calls.append(xs[0])
        return (xs[0] * 10, xs[0].sum(1))

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return asyncio.run(cache.infer(owner, [x], compute, stats))

    a, b, c = [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]
    out = run(np.array([a, b, a, a], np.float32))  # a repeats inside the batch
    np.testing.assert_array_equal(calls[-1], [a, b])
    np.testing.assert_array_equal(out[0], np.array([a, b, a, a]) * 10)
    np.testing.assert_array_equal(out[1], [3, 7, 3, 3])
    assert (stats.cache_miss.count, stats.cache_hit.count) == (2, 2)
    out = run(np.array([c, b, a, c], np.float32))
    np.testing.assert_array_equal(calls[-1], [c])  # only the unknown row runs
    np.testing.assert_array_equal(out[0], np.array([c, b, a, c]) * 10)
    assert (stats.cache_miss.count, stats.cache_hit.count) == (3, 5)
    n = len(calls)
    out = run(np.array([b, b], np.float32))  # all known: no call at all
    assert len(calls) == n
    np.testing.assert_array_equal(out[1], [7, 7])
    assert stats.cache_hit.ns > 0 and stats.cache_miss.ns > 0


# Through the server


def repo_with_caches(root: Path) -> Path:
    """render (versions 1 and 2), render-baseline and locate, render and render-baseline with
    the cache enabled."""
    repo = root / "models"
    for name in ("render", "render-baseline", "locate"):
        shutil.copytree(MODELS / name, repo / name)
    baseline = repo / "render-baseline" / "config.pbtxt"
    baseline.write_text(baseline.read_text() + "response_cache { enable: true }\n")
    return repo


@pytest.fixture
def cached(tmp_path: Path):
    repo = repo_with_caches(tmp_path)
    with live_server(
        model_dir=repo,
        cache_size_bytes=64 << 20,
        model_control_mode="explicit",
        load_model=["*"],
    ) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        gc = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        yield live, tc, gc
        tc.close()
        gc.close()


def http_render(tc: Any, coords: list[list[float]], model: str = "render", version: str = ""):
    x = np.asarray(coords, np.float32)
    inp = triton.InferInput("coords", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return tc.infer(model, [inp], model_version=version).as_numpy("image")


def grpc_render(gc: Any, coords: list[list[float]], model: str = "render", version: str = ""):
    x = np.asarray(coords, np.float32)
    inp = tgrpc.InferInput("coords", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return gc.infer(model, [inp], model_version=version).as_numpy("image")


def cache_counts(tc: Any, model: str = "render", version: str = "2") -> tuple[int, int, int]:
    """(hits, misses, inference_count) as tritonclient.http reads the statistics."""
    s = tc.get_inference_statistics(model, version)["model_stats"][0]
    stats = s["inference_stats"]
    return stats["cache_hit"]["count"], stats["cache_miss"]["count"], s["inference_count"]


def test_hits_and_misses_per_item_over_http_and_grpc(cached) -> None:
    live, tc, gc = cached
    a, b, c = [10.0, 20.0], [30.0, 40.0], [50.0, 11.0]
    first = http_render(tc, [a, b])
    assert cache_counts(tc) == (0, 2, 2)
    second = http_render(tc, [a, b, c, a])  # a and b known, a repeated, c new
    assert cache_counts(tc) == (3, 3, 3)  # inference_count: only c ran
    np.testing.assert_array_equal(second[:2], first)
    np.testing.assert_array_equal(second[3], first[0])
    np.testing.assert_allclose(second, reference("render", "2", np.array([a, b, c, a])), atol=1e-5)

    # gRPC reads the same cache, and parses the same statistics.
    via_grpc = grpc_render(gc, [c, b])
    np.testing.assert_array_equal(via_grpc, second[[2, 1]])
    stats = gc.get_inference_statistics("render", "2").model_stats[0]
    assert (stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count) == (5, 3)
    assert stats.inference_stats.cache_hit.ns > 0 and stats.inference_stats.cache_miss.ns > 0
    assert stats.inference_count == 3
    assert stats.inference_stats.success.count == 3  # requests, hits included (as Triton)

    # /v1 too: one cache below every protocol.
    r = httpx.post(live.url + "/v1/render", json={"coords": [a, c], "format": "array"}, verify=TLS)
    assert r.status_code == 200
    np.testing.assert_array_equal(np.asarray(r.json()["images"], np.float32), second[[0, 2]])
    assert cache_counts(tc) == (7, 3, 3)
    text = httpx.get(live.url + "/metrics", verify=TLS).text
    counted = re.search(
        r'^coordconv_inference_count_total\{model="render",version="2"\} (\S+)$', text, re.M
    )
    assert counted is not None and float(counted.group(1)) == 3  # items the model ran

    # The outputs asked for do not matter: every output is kept.
    inp = triton.InferInput("coords", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([b], np.float32))
    out = triton.InferRequestedOutput("image", binary_data=False)
    got = tc.infer("render", [inp], outputs=[out]).as_numpy("image")
    np.testing.assert_array_equal(got[0], first[1])


def test_no_answer_of_another_model_or_version(cached) -> None:
    _, tc, gc = cached
    coords = np.array([[12.0, 33.0], [44.0, 21.0]], np.float32)
    for _ in range(2):  # the second round is answered from the cache
        v1 = http_render(tc, coords.tolist(), version="1")
        v2 = grpc_render(gc, coords.tolist(), version="2")
        base = http_render(tc, coords.tolist(), model="render-baseline")
        np.testing.assert_allclose(v1, reference("render", "1", coords), atol=1e-5)
        np.testing.assert_allclose(v2, reference("render", "2", coords), atol=1e-5)
        np.testing.assert_allclose(base, reference("render-baseline", "1", coords), atol=1e-5)
    assert not np.allclose(v1, v2, atol=1e-3) and not np.allclose(v1, base, atol=1e-3)
    assert cache_counts(tc, "render", "1")[:2] == (2, 2)
    assert cache_counts(tc, "render", "2")[:2] == (2, 2)
    assert cache_counts(tc, "render-baseline", "1")[:2] == (2, 2)
    # locate's config does not enable the cache: it never counts a look-up.
    image = reference("render", "2", coords[:1])
    inp = triton.InferInput("image", list(image.shape), "FP32")
    inp.set_data_from_numpy(np.clip(image, 0, 1))
    for _ in range(2):
        tc.infer("locate", [inp])
    assert cache_counts(tc, "locate", "2") == (0, 0, 2)


def test_a_reload_or_an_unload_empties_the_versions_entries(cached) -> None:
    live, tc, _ = cached
    cache = live.server.registry.cache
    coords = [[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]
    http_render(tc, coords, version="1")
    http_render(tc, coords, version="2")
    http_render(tc, coords, model="render-baseline")
    assert len(cache) == 9
    tc.load_model("render")  # a reload, files unchanged: both versions start empty
    assert len(cache) == 3
    http_render(tc, coords, version="2")
    assert cache_counts(tc)[:2] == (0, 6)  # missed again (the statistics stay with the version)

    config = tc.get_model_config("render")
    config["version_policy"] = {"specific": {"versions": [1]}}
    tc.load_model("render", config=json.dumps(config))  # version 2 unloaded
    wait_for(lambda: len(cache) == 3)
    tc.unload_model("render-baseline")
    wait_for(lambda: len(cache) == 0)
    assert cache.bytes == 0


def test_the_byte_bound_holds_and_old_entries_are_evicted(tmp_path: Path) -> None:
    repo = repo_with_caches(tmp_path)
    capacity = 6 * ENTRY
    with live_server(model_dir=repo, cache_size_bytes=capacity) as live:
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
        cache = live.server.registry.cache
        assert cache is not None
        points = [[float(x), 7.0] for x in range(4, 44)]
        for i in range(0, len(points), 8):
            http_render(tc, points[i : i + 8])
            assert cache.bytes <= capacity
        assert len(cache) == 6 and cache.evictions == len(points) - 6
        http_render(tc, points[:1])  # long evicted: a miss
        http_render(tc, points[-1:])  # still there: a hit
        hits, misses, _ = cache_counts(tc)
        tc.close()
    assert (hits, misses) == (1, len(points) + 1)


def test_render_v2_keys_on_the_rounded_point_and_answers_the_same(cached) -> None:
    live, tc, _ = cached
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 64, size=(16, 2)).astype(np.float32)
    # Points around those centres (halves included: round half to even, as ONNX Round).
    jitter = rng.uniform(-0.49, 0.49, size=(4, 16, 2)).astype(np.float32)
    jitter[0, :4] = 0.5
    points = np.clip(centres[None] + jitter, 0, 63).reshape(-1, 2)
    got = np.concatenate([http_render(tc, points[i : i + 16].tolist()) for i in range(0, 64, 16)])
    np.testing.assert_allclose(got, reference("render", "2", points), atol=1e-5)
    hits, misses, count = cache_counts(tc)
    distinct = len({tuple(p) for p in np.rint(points).tolist()})
    assert misses == count == distinct and hits == 64 - distinct
    assert len(live.server.registry.cache) == distinct
    # Version 1 does not round in its graph: keyed by the point as sent.
    http_render(tc, [[x + 0.3, 5.0] for x in range(16)], version="1")
    http_render(tc, [[x + 0.1, 5.0] for x in range(16)], version="1")
    assert cache_counts(tc, "render", "1")[:2] == (0, 32)


def test_no_cache_unless_the_server_has_one(tmp_path: Path) -> None:
    repo = repo_with_caches(tmp_path)
    with live_server(model_dir=repo) as live:  # CACHE_SIZE_BYTES 0 (the default)
        tc = triton.InferenceServerClient(f"127.0.0.1:{live.port}")
        for _ in range(2):
            http_render(tc, [[10.0, 10.0]])
        assert live.server.registry.cache is None
        assert cache_counts(tc) == (0, 0, 2)
        tc.close()


# An ensemble's cached answers and its steps' versions


def roundtrip_repo(root: Path, cached: bool) -> Path:
    """render, locate and the roundtrip ensemble, roundtrip's answers cached or not."""
    repo = root / ("cached" if cached else "plain")
    for name in ("render", "locate", "roundtrip"):
        shutil.copytree(MODELS / name, repo / name)
    if cached:
        config = repo / "roundtrip" / "config.pbtxt"
        config.write_text(config.read_text() + "response_cache { enable: true }\n")
    return repo


def roundtrip_answer(tc: Any, coords: list[list[float]]) -> tuple[int, bytes]:
    """(status, the answer's image, located and confidence bytes; b"" when refused)."""
    x = np.asarray(coords, np.float32)
    inp = triton.InferInput("coords", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        r = tc.infer("roundtrip", [inp])
    except triton.InferenceServerException as exc:
        return int(exc.status() or 0), b""
    return 200, b"".join(r.as_numpy(n).tobytes() for n in ("image", "located", "confidence"))


def test_an_ensembles_cached_answer_never_outlives_a_step_version(tmp_path: Path) -> None:
    """Every control call that can change a step of a cached ensemble, each followed by the same
    requests to a cached and an uncached server driven alike: the answers byte for byte the
    same, refused alike while a step is away (cached points too), and the cache emptied."""
    points = [[10.3, 20.7], [40.0, 33.0], [59.5, 4.2]]
    only_v1 = {"version_policy": {"specific": {"versions": [1]}}}
    with (
        live_server(
            model_dir=roundtrip_repo(tmp_path, True),
            cache_size_bytes=64 << 20,
            model_control_mode="explicit",
            load_model=["*"],
        ) as cached,
        live_server(
            model_dir=roundtrip_repo(tmp_path, False),
            model_control_mode="explicit",
            load_model=["*"],
        ) as plain,
    ):
        clients = [
            triton.InferenceServerClient(f"127.0.0.1:{live.port}", network_timeout=120)
            for live in (cached, plain)
        ]
        cache = cached.server.registry.cache
        assert cache is not None

        def kept() -> int:  # the ensemble's own entries (render caches its answers too)
            owner = cached.server.registry.get("roundtrip").cache_owner
            return sum(1 for key in cache._entries if key[0] == owner)

        def control(call: str, model: str, config: dict[str, Any] | None = None) -> None:
            for tc in clients:
                if call == "unload":
                    tc.unload_model(model)
                    continue
                # None: config.pbtxt as it is; else the model's config with the change applied
                changed = None if config is None else {**tc.get_model_config(model), **config}
                tc.load_model(model, config=None if changed is None else json.dumps(changed))

        def same_answers(expect: int = 200) -> None:
            for subset in (points[:1], points, points[1:]):  # cached, mixed, then all cached
                got, want = (roundtrip_answer(tc, subset) for tc in clients)
                assert got[0] == want[0] == expect, (got[0], want[0], subset)
                assert got[1] == want[1], f"cached answer differs at {subset}"

        same_answers()
        assert kept() == 3
        steps = [
            ("load", "render", None),  # a reload, files unchanged: a new load of each version
            ("load", "render", only_v1),  # version -1 now means render version 1
            ("load", "render", None),  # back to config.pbtxt (versions 1 and 2)
            ("load", "locate", only_v1),  # the second step changes
            ("load", "locate", None),
        ]
        for call, model, config in steps:
            before = roundtrip_answer(clients[0], points[:1])[1]
            control(call, model, config)
            assert kept() == 0, f"{call} {model}: the ensemble's entries stayed"
            same_answers()
            if config == only_v1 and model == "render":
                assert roundtrip_answer(clients[0], points[:1])[1] != before  # v1 paints anew
        # A step unloaded: not ready, and no answer at all, cached points included.
        control("unload", "render")
        assert not clients[0].is_model_ready("roundtrip")
        same_answers(expect=503)
        control("load", "render")
        same_answers()
        for tc in clients:
            tc.close()
