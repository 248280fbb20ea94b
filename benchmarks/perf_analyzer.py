"""NVIDIA Triton's `perf_analyzer` against this service: the binary that `tritonclient==2.51.0`'s
wheel carries (the PyPI `perf-analyzer` wheels need a newer glibc than these machines have), in
its own virtual environment (`make perf-analyzer`), with realistic inputs (it sends random bytes
by default, which the service rightly refuses as coordinates off the canvas).

`run()` returns the client figures and the server-side breakdown that perf_analyzer reads from
the statistics extension (`/v2/models/{m}/stats`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import data

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-perf"
BINARY = VENV / "bin" / "perf_analyzer"


def available() -> str | None:
    """None if perf_analyzer can run here, else why not."""
    if not BINARY.is_file():
        return f"{BINARY} is missing: run `make perf-analyzer`"
    probe = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, env=_env())
    if "error while loading shared libraries" in probe.stderr:
        return f"perf_analyzer cannot start: {probe.stderr.strip().splitlines()[0]}"
    return None


def _env() -> dict[str, str]:
    libs = [str(p) for p in VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib")]
    return {
        **os.environ,
        "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
    }


def input_file(model: str, n: int = 256) -> Path:
    """perf_analyzer's --input-data JSON: n realistic items of the model's input."""
    rng = np.random.default_rng(0)
    centres = data.centres()[rng.choice(len(data.centres()), n, replace=False)]
    if model.startswith("locate"):
        items = [
            {"image": {"content": im.ravel().tolist(), "shape": [64, 64]}}
            for im in data.squares(centres)
        ]
    else:
        items = [{"coords": {"content": c.tolist(), "shape": [2]}} for c in centres]
    fd, name = tempfile.mkstemp(prefix=f"pa-{model}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"data": items}, f)
    return Path(name)


@dataclass
class Result:
    throughput: float  # inferences (items) per second
    p50_ms: float
    p99_ms: float
    server: str  # perf_analyzer's server-side line: overhead, queue, compute input/infer/output
    output: str


def run(
    host_port: str,
    model: str,
    protocol: str = "http",
    concurrency: int = 32,
    batch: int = 1,
    window_ms: int = 3000,
    stability_pct: int = 20,  # shared, noisy machines: perf_analyzer's default 10 rarely settles
) -> Result:
    inputs = input_file(model)
    try:
        cmd = [
            str(BINARY),
            "-m",
            model,
            "-u",
            host_port,
            "-i",
            protocol,
            "-b",
            str(batch),
            "--input-data",
            str(inputs),
            "--concurrency-range",
            str(concurrency),
            "-p",
            str(window_ms),
            "--percentile",
            "99",
            "--max-trials",
            "10",
            "-s",
            str(stability_pct),
        ]
        # A shared machine may not settle within the trials: loosen the stability bound, twice.
        for pct in (stability_pct, stability_pct + 15, stability_pct + 30):
            cmd[-1] = str(pct)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
            if "Failed to obtain stable measurement" not in proc.stdout + proc.stderr:
                break
    finally:
        inputs.unlink(missing_ok=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}): {out[-2000:]}")

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        if not m:
            raise RuntimeError(f"perf_analyzer printed no {pattern!r}: {out[-2000:]}")
        return float(m.group(1))

    server = re.search(r"Avg request latency: [^\n]*", out)
    return Result(
        throughput=number(r"Throughput: ([0-9.]+) infer/sec"),
        p50_ms=number(r"p50 latency: ([0-9]+) usec") / 1000,
        p99_ms=number(r"p99 latency: ([0-9]+) usec") / 1000,
        server=server.group(0) if server else "",
        output=out,
    )
