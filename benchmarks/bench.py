"""`make bench`: throughput and latency of the service against the limit, measured in one run.

1. The limit: onnxruntime in-process, every shipped model, batch sizes 1, 16, 64, 256, with the
   service's own session options.
2. The HTTP ceiling: a no-op route (/healthz) under the same load generator.
3. The service over loopback: (a) 64 items per request with NPY answers; (b) one item per request
   from 32 concurrent clients, batching on and off, with the mean batch size; (c) the same
   through the V2 endpoint (binary tensors); for render, Triton's perf_analyzer over gRPC beside
   HTTP (one item per request, and 64 per request).
4. The response cache (render's `response_cache { enable: true }`): case (b) over a repeating set
   of 256 points (4 around each of 64 centres), cache on (CACHE_SIZE_BYTES) and off, with the
   ratio. Every other case runs with the cache off (the default), so it measures inference.
Every service figure is printed as a ratio to the limit at batch 64. Results go to
benchmarks/results.md (and a plot of throughput and latency against concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import loadgen
from training import data

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("pixel", "render", "locate")
BATCHES = (1, 16, 64, 256)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inputs(name: str, n: int) -> np.ndarray:
    c = data.centres()[np.arange(n) % 3136]
    return data.squares(c) if name == "locate" else c


def measure_limit(providers: str, seconds: float, repeats: int = 3) -> dict[str, dict[int, float]]:
    """Images per second of raw onnxruntime with the service's session options: the best of
    `repeats` timed runs per case (the machines are shared; the limit is what is possible)."""
    out: dict[str, dict[int, float]] = {}
    for name in MODELS:
        model = open_model(name, providers)
        out[name] = {}
        for bs in BATCHES:
            x = inputs(name, bs)
            out[name][bs] = best_rate(functools.partial(model.run, x), bs, seconds, repeats)
    return out


def best_rate(call: Callable[[], object], items: int, seconds: float, repeats: int = 3) -> float:
    """Items per second of `call` (which does `items` items): one untimed call, then the best
    of `repeats` timed runs of `seconds / repeats` each (or 100,000 items)."""
    call()
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / repeats and n < 100_000:
            call()
            n += items
        best = max(best, n / (time.perf_counter() - start))
    return best


def open_model(name: str, providers: str, repo: Path = ROOT / "models") -> Any:
    """The version of a shipped model that answers requests without a version (the highest),
    as the service opens it (same session options)."""
    from service.models import config as model_config
    from service.models.version import open_version, usable_providers
    from service.settings import Settings

    settings = Settings(model_dir=repo, providers=providers)
    version = max(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    path = repo / name / str(version) / "model.onnx"
    usable, _ = usable_providers(settings, path.read_bytes())
    text = (repo / name / "config.pbtxt").read_text()
    config = model_config.from_text(text, name, strict=True)
    return open_version(name, version, path, config, settings, usable)


def without_scheduling(text: str) -> str:
    """A config text with `max_batch_size` and `dynamic_batching` removed, so the service's
    settings decide them (served with STRICT_MODEL_CONFIG=false, as Triton auto-completes)."""
    from google.protobuf import text_format

    from service.models.config import parse_text

    config = parse_text(text, "config")
    config.max_batch_size = 0
    config.ClearField("dynamic_batching")
    return str(text_format.MessageToString(config))


def silent_models(root: Path | None = None) -> Path:
    """A copy of the shipped models whose configs leave batching to the settings (how the
    'batching off' cases switch it off, and how tests set scheduling by settings)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="models-")) if root is None else root
    shutil.copytree(ROOT / "models", root, dirs_exist_ok=True)
    for config in root.glob("*/config.pbtxt"):
        config.write_text(without_scheduling(config.read_text()))
    return root


GRPC_PORTS: dict[str, int] = {}  # server URL -> its gRPC port
LATEST = "2"  # the version of pixel, render and locate that answers without a version


@contextmanager
def server(
    *args: str, root: Path = ROOT, env: dict[str, str] | None = None, **settings: Any
) -> Iterator[str]:
    """`coordconv serve` (extra options `args`, settings as environment, `env` as it is) on a
    free port, from the checkout at `root` (another commit's worktree, for benchmarks.compare)."""
    port = free_port()
    grpc_port = free_port()
    environ = {
        **os.environ,
        "COORDCONV_LOG_LEVEL": "warning",
        "COORDCONV_GRPC_PORT": str(grpc_port),
    }
    if root != ROOT:
        environ["PYTHONPATH"] = str(root)
    if {"max_batch_size", "max_queue_delay_us"} & set(settings):
        environ["COORDCONV_MODEL_DIR"] = str(silent_models())
        environ["COORDCONV_STRICT_MODEL_CONFIG"] = "false"  # 0 is filled in from the settings
    environ.update({f"COORDCONV_{k.upper()}": str(v) for k, v in settings.items()})
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordconv", "serve", "--port", str(port), *args],
        cwd=root,
        env=environ,
    )
    url = f"http://127.0.0.1:{port}"
    GRPC_PORTS[url] = grpc_port
    try:
        for _ in range(1800):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None:  # it died starting: say so now, not in 90 s
                    raise RuntimeError(f"server exited with status {proc.returncode}") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not become ready")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ray shuts its local cluster down on ^C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def counters(url: str, model: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text

    def get(name: str) -> float:
        m = re.search(rf'^{name}\{{model="{model}",version="{LATEST}"\}} ([0-9.e+]+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    return get("coordconv_inference_count_total"), get("coordconv_execution_count_total")


def load(
    url: str,
    request: bytes,
    concurrency: int,
    seconds: float,
    items: int = 1,
    requests: int = 200_000,
    warmup_s: float = 5.0,
    timeout_s: float | None = None,
) -> loadgen.Result:
    """The load generator against `url`; `timeout_s` bounds each of its runs (TimeoutError),
    so a server that stops answering cannot hold a benchmark forever."""
    port = int(url.rsplit(":", 1)[1])
    # A short warm-up (2 requests per client, at most `warmup_s`), then the measured run.
    if warmup_s > 0:
        warm = loadgen.run("127.0.0.1", port, request, concurrency, 2 * concurrency, warmup_s)
        asyncio.run(asyncio.wait_for(warm, timeout_s))
    measured = loadgen.run("127.0.0.1", port, request, concurrency, requests, seconds, items)
    return asyncio.run(asyncio.wait_for(measured, timeout_s))


def v1_request(name: str, n: int) -> bytes:
    x = inputs(name, n)
    if name == "locate":
        import io

        buf = io.BytesIO()
        np.save(buf, x)
        return loadgen.build_request(
            "POST",
            "/v1/locate",
            buf.getvalue(),
            {"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
        )
    body = json.dumps({"coords": x.tolist(), "model": name}).encode()
    return loadgen.build_request(
        "POST",
        "/v1/render",
        body,
        {"Content-Type": "application/json", "Accept": "application/x-npy"},
    )


def v2_request(name: str, n: int) -> bytes:
    x = np.ascontiguousarray(inputs(name, n), dtype="<f4")
    in_name = "image" if name == "locate" else "coords"
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": in_name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return loadgen.build_request(
        "POST",
        f"/v2/models/{name}/infer",
        head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )


def client_case(url: str, limit: float, per_64: float, n: int = 10_000) -> dict[str, Any]:
    """The batch client rendering 10,000 coordinates end to end into an .npy (64 per request,
    4 in flight), against case (a)."""
    import tempfile

    from client.batch import run
    from client.files import Items

    coords = inputs("render", n)
    items = Items([str(i) for i in range(n)], coords=coords)
    with tempfile.TemporaryDirectory() as tmp:
        summary = asyncio.run(run("render", items, Path(tmp) / "out.npy", url=url, quiet=True))
    rate = summary.succeeded / summary.seconds
    print(
        f"  client: {n} coordinates in {summary.seconds:.1f}s = {rate:.0f} items/s, "
        f"{rate / per_64:.2f}x case (a)",
        flush=True,
    )
    return {
        "case": f"client: render {n:,} coords to .npy, 64/request, 4 in flight "
        f"({rate / per_64:.2f}x case (a))",
        "items_per_s": rate,
        "rps": rate / 64,
        "p50_ms": float("nan"),
        "p99_ms": float("nan"),
        "errors": len(summary.failures),
        "ratio": rate / limit,
        "mean_batch": None,
    }


def perf_analyzer_cases(
    url: str, name: str, limit: float, concurrency: int
) -> list[dict[str, Any]]:
    """Triton's perf_analyzer over gRPC beside HTTP (binary tensors both), same server, same
    inputs: (b) one item per request from `concurrency` clients, (a) 64 items per request."""
    from benchmarks import perf_analyzer

    reason = perf_analyzer.available()
    if reason:
        print(f"  perf_analyzer cases skipped: {reason}", flush=True)
        return []
    port = url.rsplit(":", 1)[1]
    out = []
    for label, batch, conc in (("(b)", 1, concurrency), ("(a)", 64, 4)):
        for protocol, address in (
            ("http", f"127.0.0.1:{port}"),
            ("grpc", f"127.0.0.1:{GRPC_PORTS[url]}"),
        ):
            r = perf_analyzer.run(address, name, protocol, conc, batch)
            case = (
                f"{label} perf_analyzer -i {protocol}, {batch} item{'s' if batch > 1 else ''}"
                f"/request, {conc} concurrent"
            )
            print(
                f"  {case}: {r.throughput:.0f} items/s, p99 {r.p99_ms:.1f} ms; server: {r.server}",
                flush=True,
            )
            out.append(
                {
                    "case": case,
                    "items_per_s": r.throughput,
                    "rps": r.throughput / batch,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "errors": 0,
                    "ratio": r.throughput / limit,
                    "mean_batch": None,
                }
            )
    return out


CACHE_POINTS = 256  # the repeating point set of the cache case
CACHE_BYTES = 64 << 20


def cache_points() -> np.ndarray:
    """256 real-valued points, 4 around each of 64 integer centres (seeded)."""
    rng = np.random.default_rng(0)
    centres = data.centres()[rng.choice(3136, CACHE_POINTS // 4, replace=False)]
    jitter = rng.uniform(-0.45, 0.45, size=(4, len(centres), 2))
    return np.clip(centres[None] + jitter, 0, 63).reshape(-1, 2).astype(np.float32)


async def cycle(
    port: int, requests: list[bytes], concurrency: int, seconds: float
) -> loadgen.Result:
    """loadgen's closed loop over several prepared requests: client i sends requests i,
    i + concurrency, ... in turn, so the set repeats."""
    result = loadgen.Result()
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                i += concurrency
                status = await loadgen._read_response(reader)
                result.latencies.append(time.perf_counter() - t0)
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 200:
                    result.errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*[worker(i) for i in range(concurrency)])
    result.seconds = time.perf_counter() - start
    return result


def cache_cases(providers: str, seconds: float, concurrency: int, limit: float) -> list[dict]:
    """render case (b), one item per request from `concurrency` clients, over the repeating
    point set: the cache on and off, each on a server of its own, in this run."""
    points = cache_points()
    requests = [
        loadgen.build_request(
            "POST",
            "/v1/render",
            json.dumps({"coords": [p.tolist()], "model": "render"}).encode(),
            {"Content-Type": "application/json", "Accept": "application/x-npy"},
        )
        for p in points
    ]
    measured = {}
    for label, size in (("off", 0), ("on", CACHE_BYTES)):
        with server(providers=providers, cache_size_bytes=size) as url:
            port = int(url.rsplit(":", 1)[1])
            asyncio.run(cycle(port, requests, concurrency, 2.0))  # warm (and fill the cache)
            before = httpx.get(url + f"/v2/models/render/versions/{LATEST}/stats").json()
            r = asyncio.run(cycle(port, requests, concurrency, seconds))
            after = httpx.get(url + f"/v2/models/render/versions/{LATEST}/stats").json()

            def count(stats: dict[str, Any], key: str) -> int:
                return int(stats["model_stats"][0]["inference_stats"][key]["count"])

            hits = count(after, "cache_hit") - count(before, "cache_hit")
            misses = count(after, "cache_miss") - count(before, "cache_miss")
            measured[label] = (r, hits, misses)
    off, on = measured["off"][0], measured["on"][0]
    ratio = on.items_per_s / max(off.items_per_s, 1e-9)
    _, hits, misses = measured["on"]
    print(
        f"  cache: (b) over {CACHE_POINTS} repeating points, {concurrency} clients: off "
        f"{off.items_per_s:.0f} items/s (p99 {off.pct(99):.2f} ms), on {on.items_per_s:.0f} "
        f"items/s (p99 {on.pct(99):.2f} ms, {hits} hits, {misses} misses): ratio {ratio:.2f}",
        flush=True,
    )
    base = f"(b) v1, 1 item/request, {concurrency} clients, {CACHE_POINTS} repeating points"
    return [
        row(f"{base}, cache off", off, limit),
        row(f"{base}, cache on ({ratio:.2f}x off)", on, limit),
    ]


def row(label: str, r: loadgen.Result, limit: float, batch: float | None = None) -> dict[str, Any]:
    return {
        "case": label,
        "items_per_s": r.items_per_s,
        "rps": r.rps,
        "p50_ms": r.pct(50),
        "p99_ms": r.pct(99),
        "errors": r.errors,
        "ratio": r.items_per_s / limit,
        "mean_batch": batch,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--providers", default="cpu", help="cpu, or cuda,cpu on a GPU machine")
    p.add_argument("--seconds", type=float, default=5.0, help="per measured case")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"))
    p.add_argument("--sweep", action="store_true", help="also sweep concurrency (plot)")
    p.add_argument("--ray", action="store_true", help="also run case (b) on Ray Serve")
    p.add_argument(
        "--no-perf-analyzer", action="store_true", help="skip the perf_analyzer (gRPC) cases"
    )
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="only the response cache case (render, cache on and off), printed, not written",
    )
    p.add_argument(
        "--workers",
        default="1,2",
        help="worker counts for the scale-out cases (render, (a) and (b)); on the GPU machine "
        "1,2,4,8",
    )
    a = p.parse_args(argv)
    threads = os.cpu_count() or 1
    if a.cache_only:
        limit1 = measure_limit(a.providers, min(a.seconds, 3.0))["render"][64]
        print(f"limit: render at batch 64: {limit1:.0f} items/s", flush=True)
        for case in cache_cases(a.providers, a.seconds, a.concurrency, limit1):
            print(f"  {case['case']}: {case['items_per_s']:.0f} items/s, ratio {case['ratio']:.2f}")
        return 0
    print(f"limit: onnxruntime in-process ({a.providers}) ...", flush=True)
    limit = measure_limit(a.providers, min(a.seconds, 3.0))
    for name in MODELS:
        print(f"  {name:<7}" + "".join(f"  b{bs}: {limit[name][bs]:9.0f}/s" for bs in BATCHES))
    rows: dict[str, list[dict[str, Any]]] = {}
    c = a.concurrency
    with server(providers=a.providers) as url:
        noop = load(url, loadgen.build_request("GET", "/healthz"), c, a.seconds)
        print(
            f"HTTP ceiling (GET /healthz, {c} clients): {noop.rps:.0f} req/s, "
            f"p50 {noop.pct(50):.2f} ms, p99 {noop.pct(99):.2f} ms",
            flush=True,
        )
        for name in a.models:
            lim = limit[name][64]
            out = rows.setdefault(name, [])
            r = load(url, v1_request(name, 64), 4, a.seconds, items=64)
            out.append(row("(a) v1, 64 items/request, NPY, 4 clients", r, lim))
            if name == "render":
                out.append(client_case(url, lim, r.items_per_s))
            before = counters(url, name)
            r = load(url, v1_request(name, 1), c, a.seconds)
            after = counters(url, name)
            mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
            out.append(row(f"(b) v1, 1 item/request, {c} clients, batching on", r, lim, mean))
            before = counters(url, name)
            r = load(url, v2_request(name, 1), c, a.seconds)
            after = counters(url, name)
            mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
            out.append(
                row(f"(c) v2 binary, 1 item/request, {c} clients, batching on", r, lim, mean)
            )
            if name == "render" and not a.no_perf_analyzer:
                out.extend(perf_analyzer_cases(url, name, lim, c))
    if "render" in a.models:
        rows["render"].extend(cache_cases(a.providers, a.seconds, c, limit["render"][64]))
    with server(providers=a.providers, max_queue_delay_us=0, max_batch_size=1) as url:
        for name in a.models:
            lim = limit[name][64]
            r = load(url, v1_request(name, 1), c, a.seconds)
            rows[name].insert(
                2, row(f"(b) v1, 1 item/request, {c} clients, batching off", r, lim, 1.0)
            )
            r = load(url, v2_request(name, 1), c, a.seconds)
            rows[name].append(
                row(f"(c) v2 binary, 1 item/request, {c} clients, batching off", r, lim, 1.0)
            )
    if a.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed: skipping the Ray case", flush=True)
        else:
            with server("--ray", "--ray-replicas", "2", providers=a.providers) as url:
                r = load(url, v1_request("render", 1), c, a.seconds)
                rows["render"].append(
                    row(
                        f"(b) Ray Serve, 2 replicas, 1 item/request, {c} clients, batching on",
                        r,
                        limit["render"][64],
                    )
                )
    scaling = run_workers(
        [int(w) for w in a.workers.split(",")], a.providers, a.seconds, c, limit["render"][64]
    )
    # Measure the limit again after the service runs and keep the better figure of the two, so a
    # noisy moment at the start cannot flatter the ratios.
    again = measure_limit(a.providers, min(a.seconds, 3.0))
    for name in MODELS:
        for bs in BATCHES:
            limit[name][bs] = max(limit[name][bs], again[name][bs])
        for case in rows.get(name, []):
            case["ratio"] = case["items_per_s"] / limit[name][64]
    for point in scaling:
        for key in ("a", "b"):
            point[key]["ratio"] = point[key]["items_per_s"] / limit["render"][64]
    sweep = run_sweep(a.providers, a.seconds, limit["render"][64]) if a.sweep else []
    confidence = None
    locate_v2 = ROOT / "models" / "locate" / "2" / "model.onnx"
    if locate_v2.is_file():
        from training.evaluate import confidence_cost

        confidence = confidence_cost(locate_v2)
        print(
            f"locate v2, batch 64: {confidence['with_confidence']:.0f} images/s with its "
            f"confidence, {confidence['without']:.0f} without: ratio {confidence['ratio']:.2f}",
            flush=True,
        )
    report = {
        "confidence_cost": confidence,
        "providers": a.providers,
        "machine": f"{platform.machine()}, {threads} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "limit": limit,
        "http_ceiling_rps": noop.rps,
        "http_ceiling_p50_ms": noop.pct(50),
        "http_ceiling_p99_ms": noop.pct(99),
        "cases": rows,
        "sweep": sweep,
        "workers": scaling,
        "pytriton": pytriton_reference(),
        "concurrency": c,
        "seconds": a.seconds,
    }
    for name, cases in rows.items():
        print(f"\n{name} (limit at batch 64: {limit[name][64]:.0f} items/s)")
        for case in cases:
            mb = f"  mean batch {case['mean_batch']:.1f}" if case["mean_batch"] else ""
            print(
                f"  {case['case']:<58} {case['items_per_s']:8.0f} items/s  "
                f"ratio {case['ratio']:.2f}  p50 {case['p50_ms']:6.2f} ms  "
                f"p99 {case['p99_ms']:6.2f} ms  errors {case['errors']}{mb}"
            )
    print("\nrender with --workers N:")
    for point in scaling:
        print(
            f"  workers {point['workers']}: (b) {point['b']['items_per_s']:,.0f} items/s, ratio "
            f"{point['b']['ratio']:.2f}, p99 {point['b']['p99_ms']:.1f} ms; (a) "
            f"{point['a']['items_per_s']:,.0f} items/s, ratio {point['a']['ratio']:.2f}"
        )
    for line in target_lines(report):
        print(line)
    write_report(report, Path(a.out), Path(a.json))
    print(f"\nwrote {a.out}")
    return 0


def run_workers(
    counts: list[int], providers: str, seconds: float, concurrency: int, limit: float
) -> list[dict[str, Any]]:
    """render's cases (a) and (b) against `coordconv serve --workers N`, one server per count."""
    points = []
    for n in counts:
        print(f"render with --workers {n} ...", flush=True)
        with server("--workers", str(n), providers=providers) as url:
            before = counters(url, "render")
            b = load(url, v1_request("render", 1), concurrency, seconds)
            after = counters(url, "render")
            mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
            a = load(url, v1_request("render", 64), 4, seconds, items=64)
        points.append(
            {
                "workers": n,
                "b": row(
                    f"(b) --workers {n}, 1 item/request, {concurrency} clients", b, limit, mean
                ),
                "a": row(f"(a) --workers {n}, 64 items/request, 4 clients", a, limit),
            }
        )
    return points


def pytriton_reference() -> dict[str, Any] | None:
    """PyTriton's figures from the last `make bench-peers` run (benchmarks/peers.json)."""
    path = ROOT / "benchmarks" / "peers.json"
    if not path.is_file():
        return None
    peers = json.loads(path.read_text())
    rows = [
        r for r in peers["rows"] if r["server"] == "pytriton" and r["case"].startswith("loadgen")
    ]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["p99_ms"])
    return {
        "date": peers["date"],
        "case": best["case"],
        "p99_ms": best["p99_ms"],
        "items_per_s": best["items_per_s"],
    }


def target_lines(rep: dict[str, Any]) -> list[str]:
    """Issue 19's targets against this run's figures."""
    points = rep.get("workers") or []
    if not points:
        return []
    ref = rep.get("pytriton")
    lines = ["", "Targets (render, ratios to raw onnxruntime at batch 64 in this run):", ""]
    for p in points:
        b, a = p["b"], p["a"]
        vs = (
            f", PyTriton's p99 {ref['p99_ms']:.1f} ms ({ref['case']}, bench-peers {ref['date']}): "
            + ("below" if b["p99_ms"] < ref["p99_ms"] else "NOT below")
            if ref
            else ""
        )
        b_met = "met" if b["ratio"] >= 0.7 else "NOT met"
        a_met = "met" if a["ratio"] >= 0.85 else "NOT met"
        lines.append(
            f"- --workers {p['workers']}: (b) ratio {b['ratio']:.2f} (target 0.70: {b_met}), "
            f"p99 {b['p99_ms']:.1f} ms{vs}; (a) ratio {a['ratio']:.2f} (target 0.85: {a_met})"
        )
    return lines


def run_sweep(providers: str, seconds: float, limit: float) -> list[dict[str, Any]]:
    points = []
    with server(providers=providers) as url:
        for conc in (1, 2, 4, 8, 16, 32, 64):
            r = load(url, v1_request("render", 1), conc, seconds / 2)
            points.append(
                {
                    "concurrency": conc,
                    "items_per_s": r.items_per_s,
                    "p50_ms": r.pct(50),
                    "p99_ms": r.pct(99),
                    "ratio": r.items_per_s / limit,
                }
            )
            print(
                f"  sweep c={conc:<3} {r.items_per_s:8.0f} items/s  p99 {r.pct(99):.2f} ms",
                flush=True,
            )
    return points


def write_report(report: dict[str, Any], md: Path, js: Path) -> None:
    previous: dict[str, Any] = json.loads(js.read_text()) if js.exists() else {}
    runs = previous.get("runs", {})
    runs[report["providers"]] = report  # CPU and GPU figures side by side
    js.write_text(json.dumps({"runs": runs}, indent=1, default=float) + "\n")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.bench`); one run per provider, every",
        "figure of a run measured on the same machine in that run. Ratios are service",
        "throughput (items/s) over raw onnxruntime at batch 64 in the same run. The load",
        "generator (benchmarks/loadgen.py) runs on the same machine and shares its CPUs.",
        "",
    ]
    for prov, rep in runs.items():
        lines += [
            f"## Provider `{prov}` ({rep['machine']}, {rep['date']})",
            "",
            "### The limit: onnxruntime in-process (items/s)",
            "",
            "| model | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
            "|---|" + "---:|" * len(BATCHES),
        ]
        for name, by_bs in rep["limit"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{by_bs[str(b)] if str(b) in by_bs else by_bs[b]:,.0f}" for b in BATCHES
                )
                + " |"
            )
        cost = rep.get("confidence_cost")
        if cost:
            lines += [
                "",
                f"locate v2 (onnxruntime, batch 64): {cost['with_confidence']:,.0f} images/s "
                f"with its confidence output, {cost['without']:,.0f} with the graph cut to "
                f"coords only: ratio {cost['ratio']:.2f}.",
            ]
        lines += [
            "",
            f"HTTP ceiling (GET /healthz, {rep['concurrency']} clients): "
            f"{rep['http_ceiling_rps']:,.0f} requests/s, p50 {rep['http_ceiling_p50_ms']:.2f} ms, "
            f"p99 {rep['http_ceiling_p99_ms']:.2f} ms.",
            "",
        ]
        for name, cases in rep["cases"].items():
            lines += [
                f"### {name}",
                "",
                "| case | items/s | ratio to limit | p50 ms | p99 ms | mean batch | errors |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in cases:
                mb = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else ""
                lines.append(
                    f"| {r['case']} | {r['items_per_s']:,.0f} | {r['ratio']:.2f} | "
                    f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {mb} | {r['errors']} |"
                )
            lines.append("")
        if rep.get("workers"):
            lines += [
                "### render with `--workers N` (same load, one server per count)",
                "",
                "| workers | (b) items/s | (b) ratio | (b) p99 ms | (b) mean batch "
                "| (a) items/s | (a) ratio | (a) p99 ms |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for p in rep["workers"]:
                b, a = p["b"], p["a"]
                lines.append(
                    f"| {p['workers']} | {b['items_per_s']:,.0f} | {b['ratio']:.2f} "
                    f"| {b['p99_ms']:.1f} | {b['mean_batch'] or 0:.1f} | {a['items_per_s']:,.0f} "
                    f"| {a['ratio']:.2f} | {a['p99_ms']:.1f} |"
                )
            lines += [*target_lines(rep)[1:], ""]
        if rep.get("sweep"):
            plot_sweep(rep["sweep"], md.parent / f"sweep_{prov.replace(',', '_')}.png")
            lines += [
                f"![render, one item per request, against concurrency]"
                f"(sweep_{prov.replace(',', '_')}.png)",
                "",
            ]
    md.write_text("\n".join(lines) + "\n")


def plot_sweep(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [p["concurrency"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(conc, [p["items_per_s"] for p in points], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients (1 item per request)")
    ax.set_ylabel("items/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(conc, [p["p50_ms"] for p in points], "s--", color="tab:orange", label="p50")
    ax2.plot(conc, [p["p99_ms"] for p in points], "^--", color="tab:red", label="p99")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(loc="upper left")
    ax.set_title("render over HTTP, batching on")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
