"""`make bench-peers`: the same render ONNX model (models/render/2) served by this service, by
NVIDIA PyTriton (Triton's C++ HTTP server and dynamic batcher) and by MLServer (adaptive batching),
each peer in its own virtual environment (.venv-peers/NAME, made on first use), all measured in one
run on this machine with the same load generator (benchmarks/loadgen.py) and, where the server has
Triton's config and statistics routes, Triton's perf_analyzer. Writes benchmarks/peers.md and
benchmarks/peers.json.

Each peer gets its documented best configuration for this model: batching on with this service's
limits (max batch 64, 500 us queue delay), onnxruntime with this service's session options (intra-op
threads: onnxruntime's default, one inter-op thread, no spinning), the same onnxruntime release.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import bench, loadgen, perf_analyzer

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(__file__).resolve().parent / "peer_servers"
MODEL = ROOT / "models" / "render" / "2" / "model.onnx"
ORT_VERSION = importlib.metadata.version("onnxruntime-gpu")


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    versions_of: tuple[str, ...]

    @property
    def venv(self) -> Path:
        return ROOT / ".venv-peers" / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


PEERS = (
    Peer(
        "pytriton",
        ("nvidia-pytriton==0.7.0", f"onnxruntime=={ORT_VERSION}", "numpy<2"),
        ("nvidia-pytriton", "onnxruntime", "tritonclient"),
    ),
    # MLServer 1.7.1 dies at start-up with uvloop 0.22 or newer ("There is no current event
    # loop in thread 'MainThread'"): its environment pins uvloop < 0.22.
    Peer(
        "mlserver",
        ("mlserver==1.7.1", "uvloop<0.22", f"onnxruntime=={ORT_VERSION}"),
        ("mlserver", "onnxruntime", "uvloop"),
    ),
)


def ensure(peer: Peer) -> dict[str, str]:
    """The peer's virtual environment (made once), and its packages' versions."""
    done = peer.venv / ".done"
    if not done.is_file():
        print(f"peers: installing {peer.name} into {peer.venv.relative_to(ROOT)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True)
        subprocess.run(
            [
                str(peer.python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *peer.packages,
            ],
            check=True,
        )
        done.touch()
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(peer.python), "-c", code, *peer.versions_of],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions: dict[str, str] = json.loads(out)
    return versions


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/models/render/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not ready in {timeout_s} s")


@contextmanager
def running(cmd: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(url, proc)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def pytriton(tmp: Path) -> Iterator[tuple[str, str]]:
    peer = PEERS[0]
    http, grpc, metrics = bench.free_port(), bench.free_port(), bench.free_port()
    # Triton's Python backend stub must find the interpreter's libpython (PyTriton's install notes).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    cmd = [
        str(peer.python),
        str(SERVERS / "pytriton_render.py"),
        str(MODEL),
        str(http),
        str(grpc),
        str(metrics),
    ]
    with running(cmd, f"http://127.0.0.1:{http}", env, tmp / "pytriton.log") as url:
        yield url, f"127.0.0.1:{grpc}"


@contextmanager
def mlserver(tmp: Path) -> Iterator[tuple[str, str]]:
    peer = PEERS[1]
    http, grpc, metrics = bench.free_port(), bench.free_port(), bench.free_port()
    root = tmp / "mlserver"
    (root / "render").mkdir(parents=True)
    settings = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1"}
    (root / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "render",
        "implementation": "mlserver_render.OnnxRender",
        "max_batch_size": 64,
        "max_batch_time": 0.0005,
        "parameters": {"uri": str(MODEL)},
    }
    (root / "render" / "model-settings.json").write_text(json.dumps(model))
    env = {**os.environ, "PYTHONPATH": str(SERVERS)}
    cmd = [str(peer.venv / "bin" / "mlserver"), "start", str(root)]
    with running(cmd, f"http://127.0.0.1:{http}", env, tmp / "mlserver.log") as url:
        yield url, f"127.0.0.1:{grpc}"


@contextmanager
def ours(tmp: Path, workers: int = 1) -> Iterator[tuple[str, str]]:
    with bench.server("--workers", str(workers), providers="cpu") as url:
        yield url, f"127.0.0.1:{bench.GRPC_PORTS[url]}"


@contextmanager
def ours_workers2(tmp: Path) -> Iterator[tuple[str, str]]:
    with ours(tmp, workers=2) as addresses:
        yield addresses


def v2_json_request(n: int) -> bytes:
    x = bench.inputs("render", n)
    body = {
        "inputs": [
            {"name": "coords", "shape": [n, 2], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    return loadgen.build_request(
        "POST",
        "/v2/models/render/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )


def measure(
    name: str, url: str, grpc: str, seconds: float, concurrency: int, limit: float
) -> list[dict[str, Any]]:
    cases: list[tuple[str, bytes]] = [("V2 JSON", v2_json_request(1))]
    if name != "mlserver":  # MLServer speaks V2 JSON only (a binary request gets a 500)
        cases.append(("V2 binary", bench.v2_request("render", 1)))
    if name.startswith("ours"):  # the product route, as `make bench` case (b)
        cases.append(("/v1/render, NPY answer", bench.v1_request("render", 1)))
    rows = []
    for label, request in cases:
        r = bench.load(url, request, concurrency, seconds)
        rows.append(
            {
                "server": name,
                "case": f"loadgen, {label}, 1 item/request, {concurrency} clients",
                "items_per_s": r.items_per_s,
                "p50_ms": r.pct(50),
                "p99_ms": r.pct(99),
                "errors": r.errors,
                "ratio": r.items_per_s / limit,
            }
        )
        print(
            f"  {name}: {rows[-1]['case']}: {r.items_per_s:,.0f} items/s, p99 "
            f"{r.pct(99):.1f} ms, {r.errors} errors",
            flush=True,
        )
    # perf_analyzer needs /v2/models/{m}/config, which MLServer does not have.
    reason = perf_analyzer.available()
    if name != "mlserver" and reason is None:
        host_port = url.removeprefix("http://")
        for protocol, address in (("http", host_port), ("grpc", grpc)):
            p = perf_analyzer.run(address, "render", protocol, concurrency, 1)
            rows.append(
                {
                    "server": name,
                    "case": f"perf_analyzer -i {protocol}, 1 item/request, "
                    f"{concurrency} concurrent",
                    "items_per_s": p.throughput,
                    "p50_ms": p.p50_ms,
                    "p99_ms": p.p99_ms,
                    "errors": 0,
                    "ratio": p.throughput / limit,
                }
            )
            print(
                f"  {name}: {rows[-1]['case']}: {p.throughput:,.0f} items/s, p99 {p.p99_ms:.1f} ms",
                flush=True,
            )
    elif reason:
        print(f"  perf_analyzer skipped: {reason}", flush=True)
    return rows


def write(report: dict[str, Any], md: Path, js: Path) -> None:
    js.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# This service beside NVIDIA PyTriton and MLServer",
        "",
        f"Generated by `make bench-peers` (`python -m benchmarks.peers`) on {report['date']}: "
        f"{report['machine']}. The same ONNX model (`models/render/2/model.onnx`) on every server, "
        "one after the other in one run; the load generator runs on the same machine and shares "
        "its CPUs. Ratios are items/s over raw onnxruntime at batch 64 in the same run "
        f"({report['limit_64']:,.0f} items/s).",
        "",
        "What each server was given (its documented best for this model):",
        "",
        "- this service (`ours`): the shipped repository (render's `config.pbtxt`: dynamic "
        "batching, max batch 64, 500 us queue delay, one instance), `--providers cpu`; "
        "`ours --workers 2`: the same in two worker processes on one port.",
        "- PyTriton: `@batch` infer function, `DynamicBatcher(max_queue_delay_microseconds=500)`, "
        "`max_batch_size=64`, strict outputs; the statistics route opened for perf_analyzer "
        "(loopback only).",
        "- MLServer: a custom runtime (MLServer has no onnxruntime runtime), adaptive batching "
        "`max_batch_size: 64`, `max_batch_time: 0.0005`, its default parallel inference worker.",
        "- onnxruntime in every server: the same release and session options (intra-op threads "
        "onnxruntime's default, one inter-op thread, no spinning, full graph optimisation).",
        "",
        "Versions: "
        + "; ".join(
            f"{peer}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
            for peer, vs in report["versions"].items()
        )
        + ".",
        "",
        "| server | case | items/s | ratio to limit | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['server']} | {r['case']} | {r['items_per_s']:,.0f} | {r['ratio']:.2f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
        )
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0, help="per measured case")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--peers", nargs="+", default=["ours", "ours --workers 2", "pytriton", "mlserver"]
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "peers.md"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "peers.json"))
    a = p.parse_args(argv)
    versions = {"ours": {"onnxruntime-gpu": ORT_VERSION}}
    for peer in PEERS:
        if peer.name in a.peers:
            versions[peer.name] = ensure(peer)
    limit = bench.measure_limit("cpu", 3.0)["render"][64]
    print(f"peers: raw onnxruntime render at batch 64: {limit:,.0f} items/s", flush=True)
    starters = {
        "ours": ours,
        "ours --workers 2": ours_workers2,
        "pytriton": pytriton,
        "mlserver": mlserver,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for name in a.peers:
            with starters[name](Path(tmp)) as (url, grpc):
                rows += measure(name, url, grpc, a.seconds, a.concurrency, limit)
    # The limit again after the servers ran, keeping the better figure (as `make bench` does):
    # a noisy moment at the start must not flatter the ratios.
    limit = max(limit, bench.measure_limit("cpu", 3.0)["render"][64])
    for r in rows:
        r["ratio"] = r["items_per_s"] / limit
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "limit_64": limit,
        "versions": versions,
        "rows": rows,
    }
    write(report, Path(a.out), Path(a.json))
    print(f"peers: wrote {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
