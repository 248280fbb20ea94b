"""`make gpu-check`: onnxruntime and the service on whatever execution provider this machine has,
in one run, into one results file (benchmarks/gpu-<provider>.json and a short .md beside it).

Sections, each recorded with its error if it fails (the next one runs all the same, so one
broken piece never wastes a lent GPU machine's time), the file rewritten after each:

1. environment: device, driver, CUDA, cuDNN and onnxruntime versions (nvidia-smi, NVML where
   `pynvml` is importable, onnxruntime's build info), CPU model and cores, and which provider a
   session really gets (`--providers`, default cuda,cpu: the first that loads).
2. parity: every shipped model (models/<name>/<version>/model.onnx) on that provider against
   CPUExecutionProvider over the full canvas (the 4096 integer centres; for image models the
   square and the one-hot image of each): the largest absolute output difference, and the task
   metrics on both (IoU at 0.5, pixel accuracy, locate error in pixels).
3. onnxruntime: items/s of raw onnxruntime at batch 1, 16, 64, 256, 1024, with `run` and with
   IOBinding (input bound from the CPU, outputs bound on the device).
4. service: `coordconv serve --workers N` for render and locate, 64 items and 1 item per
   request, from 32 and 256 clients: items/s, p50/p99, the batch the server formed (from
   `coordconv_batch_size`), raw onnxruntime at that batch for comparison, and where the time
   goes (queue, compute and the rest, from the server's histograms against the latency).

On a GPU machine whose CUDA and cuDNN libraries are pip packages (nvidia-*), their lib folders go
on LD_LIBRARY_PATH (the process starts again with it, so this process and the servers it starts
load them alike) and `onnxruntime.preload_dlls()` runs where it exists. docs/gpu.md says how
onnxruntime-gpu and the serving packages get there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench

ROOT = bench.ROOT
REPO = ROOT / "models"
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
SHORT = {v: k for k, v in PROVIDERS.items()}
CPU = PROVIDERS["cpu"]
SECTIONS = ("environment", "parity", "onnxruntime", "service")
RESTARTED = "COORDCONV_GPU_CHECK_LIBS"  # set once the process runs with the nvidia libraries
# The service's queue bound (items per model) and request timeout during the load: 256 clients
# of 64 items each would overflow the default 1024 items, and on a CPU wait longer than the
# default 30 s, and so measure refusals (503s) instead of throughput.
QUEUE_ITEMS = 32_768
TIMEOUT_S = 120
HISTOGRAMS = {
    "batch": "coordconv_batch_size",
    "queue": "coordconv_queue_duration_seconds",
    "compute": "coordconv_compute_duration_seconds",
    "request": "coordconv_request_duration_seconds",
}
START = time.perf_counter()


def say(line: str) -> None:
    print(f"[gpu-check {time.perf_counter() - START:6.1f}s] {line}", flush=True)


# --- libraries -------------------------------------------------------------------------------


def nvidia_lib_dirs() -> list[str]:
    """The lib folders of the CUDA and cuDNN pip packages importable here (site-packages/nvidia/
    <component>/lib; CUDA 13's consolidated nvidia/cu13/lib)."""
    dirs: list[str] = []
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            for lib in sorted(base.glob("*/lib")) + sorted(base.glob("*/*/lib")):
                if any(lib.glob("lib*.so*")) and str(lib) not in dirs:
                    dirs.append(str(lib))
    return dirs


def restart_with_libraries(argv: list[str]) -> None:
    """Start this module again with the nvidia lib folders on LD_LIBRARY_PATH, where any is
    missing there: the dynamic loader reads it only when a process starts, and onnxruntime's
    CUDA provider (here and in the servers this starts) finds cuBLAS and cuDNN through it.
    onnxruntime.preload_dlls() alone looks beside onnxruntime, which a `pip install --target`
    puts elsewhere."""
    dirs = nvidia_lib_dirs()
    current = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    missing = [d for d in dirs if d not in current]
    if not missing or os.environ.get(RESTARTED):
        return
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(missing + current), RESTARTED: "1"}
    print(f"gpu-check: restarting with {len(missing)} nvidia lib folders on LD_LIBRARY_PATH")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.gpu", *argv], env)


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """What is written to file descriptors 1 and 2 inside the block (onnxruntime's C++ logger
    and preload_dlls say why a library did not load there), as lines, and echoed as well."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            sys.stderr.write(text)


def load_libraries() -> dict[str, Any]:
    """Import onnxruntime after preloading the CUDA/cuDNN libraries where it can; what happened,
    for the results."""
    record: dict[str, Any] = {
        "nvidia_lib_dirs": nvidia_lib_dirs(),
        "restarted_with_ld_library_path": bool(os.environ.get(RESTARTED)),
    }
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        record["preload_dlls"] = "absent (onnxruntime < 1.21, or the CPU build)"
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        record["preload_dlls"] = "not called: this onnxruntime has no CUDA provider"
    elif not record["nvidia_lib_dirs"] and not Path("/dev/nvidiactl").exists():
        record["preload_dlls"] = "not called: no GPU device and no nvidia-* library packages"
    else:
        with captured_output() as said:
            preload()
        record["preload_dlls"] = "called"
        record["preload_dlls_said"] = said
    return record


# --- sessions --------------------------------------------------------------------------------


def session_options() -> tuple[Any, str]:
    """The service's session options where the service imports (its dependencies are carried
    to the GPU machine separately), else onnxruntime's defaults, and which it was."""
    import onnxruntime as ort

    try:
        from service.models.version import session_options as service_options
        from service.settings import Settings
    except ImportError as exc:
        return ort.SessionOptions(), f"onnxruntime defaults (the service does not import: {exc})"
    return service_options(Settings()), "the service's (service.models.version.session_options)"


def open_session(path: Path, providers: list[str]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options()[0], providers=providers)


def found_provider(wanted: list[str]) -> tuple[str, dict[str, Any]]:
    """The first of `wanted` (short names) that a session really gets, probed on a shipped
    model, and what onnxruntime said while trying."""
    import onnxruntime as ort

    names = [PROVIDERS[p] for p in wanted]
    available = ort.get_available_providers()
    usable = [p for p in names if p in available] or [CPU]
    if CPU not in usable:
        usable.append(CPU)
    probe = REPO / "locate" / "1" / "model.onnx"
    with captured_output() as said:
        got = open_session(probe, usable).get_providers()
    return got[0], {
        "wanted": names,
        "available": available,
        "asked": usable,
        "session_providers": got,
        "onnxruntime_said": said[-20:],
    }


def session_providers(found: str) -> list[str]:
    return [found] if found == CPU else [found, CPU]


def latest(name: str) -> Path:
    version = max(int(p.name) for p in (REPO / name).iterdir() if p.name.isdigit())
    return REPO / name / str(version) / "model.onnx"


def shipped_models(names: list[str] | None = None) -> list[tuple[str, str, Path]]:
    """(name, version, path) of every model file in models/, or of those `names` names (a
    model, or one version of it: `render/2`)."""
    out = []
    for path in sorted(REPO.glob("*/*/model.onnx")):
        name, version = path.parent.parent.name, path.parent.name
        if version.isdigit() and (names is None or {name, f"{name}/{version}"} & set(names)):
            out.append((name, version, path))
    return out


def run_batched(session: Any, x: np.ndarray, batch: int) -> list[np.ndarray]:
    inp = session.get_inputs()[0].name
    parts = [session.run(None, {inp: x[i : i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate(col) for col in zip(*parts, strict=True)]


# --- 1. environment --------------------------------------------------------------------------


def command_output(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"
    return (done.stdout + done.stderr).strip()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def nvml() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"error": "pynvml is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"error": f"nvmlInit: {exc}"}

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                {
                    "name": text(pynvml.nvmlDeviceGetName(h)),
                    "memory_gib": round(mem.total / 2**30, 1),
                    "compute_capability": ".".join(
                        map(str, pynvml.nvmlDeviceGetCudaComputeCapability(h))
                    ),
                }
            )
        return {
            "driver": text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_api": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "gpus": gpus,
        }
    finally:
        pynvml.nvmlShutdown()


def environment(found: str, probe: dict[str, Any], libraries: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    import onnxruntime as ort

    build: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        from onnxruntime.capi import build_and_package_info as info

        build = {k: v for k, v in vars(info).items() if not k.startswith("_")}
    smi = command_output(["nvidia-smi"])
    cuda_line = re.search(r"CUDA Version:\s*([0-9.]+)", smi)
    packages = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith(("nvidia-", "onnxruntime", "torch")):
            packages[name] = dist.version
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "found_provider": found,
        "probe": probe,
        "libraries": libraries,
        "onnxruntime": {
            "version": ort.__version__,
            "device": ort.get_device(),
            "module": str(Path(ort.__file__).parent),
            "available_providers": ort.get_available_providers(),
            "build": build,
            "session_options": session_options()[1],
        },
        "nvidia_smi": {
            "gpus": command_output(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader",
                ]
            ),
            "cuda_version": cuda_line.group(1) if cuda_line else None,
        },
        "nvml": nvml(),
        "packages": dict(sorted(packages.items())),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None,
    }


# --- 2. parity -------------------------------------------------------------------------------


def canvas_inputs(input_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, true points) over the full canvas: the 4096 integer centres, or for an image
    input the square images of every centre followed by the one-hot images."""
    from training import data

    c = data.full_centres()
    if input_name == "image":
        return np.concatenate([data.squares(c), data.onehots(c)]), np.concatenate([c, c])
    return c, c


def task_metrics(task: str, outs: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    from training import data, metrics

    if task == "render":
        ious = metrics.iou(outs["image"], data.squares(truth))
        return {"mean_iou": float(ious.mean()), "min_iou": float(ious.min())}
    if task == "pixel":
        return {"accuracy": metrics.accuracy(outs["heatmap"], data.pixel_index(truth))}
    err = metrics.errors_px(outs["coords"], truth)
    n = len(truth) // 2
    return {
        "squares_mean_error_px": float(err[:n].mean()),
        "squares_max_error_px": float(err[:n].max()),
        "onehots_mean_error_px": float(err[n:].mean()),
        "onehots_max_error_px": float(err[n:].max()),
    }


def agreement(task: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """How far the found provider's answers are from the CPU's, in the task's terms."""
    from training import metrics

    if task == "render":
        ious = metrics.iou(a["image"], b["image"] > 0.5)
        return {"min_iou_vs_cpu": float(ious.min()), "mean_iou_vs_cpu": float(ious.mean())}
    if task == "pixel":
        same = a["heatmap"].reshape(len(a["heatmap"]), -1).argmax(1) == b["heatmap"].reshape(
            len(b["heatmap"]), -1
        ).argmax(1)
        return {"argmax_agreement": float(same.mean())}
    return {"max_coords_diff_px": float(metrics.errors_px(a["coords"], b["coords"]).max())}


def parity(found: str, names: list[str] | None, batch: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, version, path in shipped_models(names):
        key = f"{name}/{version}"
        t0 = time.perf_counter()
        try:
            on = open_session(path, session_providers(found))
            cpu = open_session(path, [CPU])
            task = on.get_modelmeta().custom_metadata_map.get("coordconv.task", "?")
            x, truth = canvas_inputs(on.get_inputs()[0].name)
            names_out = [o.name for o in on.get_outputs()]
            a = dict(zip(names_out, run_batched(on, x, batch), strict=True))
            b = dict(zip(names_out, run_batched(cpu, x, batch), strict=True))
            rows[key] = {
                "task": task,
                "providers": on.get_providers(),
                "cpu_providers": cpu.get_providers(),
                "items": len(x),
                "max_abs_diff": {k: float(np.abs(a[k] - b[k]).max()) for k in names_out},
                "found": task_metrics(task, a, truth),
                "cpu": task_metrics(task, b, truth),
                **agreement(task, a, b),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            diff = max(rows[key]["max_abs_diff"].values())
            say(f"  parity {key:<20} {len(x)} items, max |diff| {diff:.3g}")
        except Exception as exc:  # one model's failure is that model's row
            rows[key] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  parity {key}: FAILED {exc}")
    return {"batch": batch, "models": rows}


# --- 3. raw onnxruntime ----------------------------------------------------------------------


def iobinding_call(session: Any, x: np.ndarray, device: str) -> Callable[[], object]:
    """One run with the input bound from host memory and every output bound on `device`
    (left there: a server on the GPU would copy only what it sends)."""
    binding = session.io_binding()
    binding.bind_cpu_input(session.get_inputs()[0].name, x)
    for out in session.get_outputs():
        binding.bind_output(out.name, device)
    return functools.partial(session.run_with_iobinding, binding)


def raw_onnxruntime(
    found: str, names: list[str], batches: list[int], seconds: float
) -> dict[str, Any]:
    device = "cuda" if found == PROVIDERS["cuda"] else "cpu"
    models: dict[str, Any] = {}
    for name in names:
        path = latest(name)
        session = open_session(path, session_providers(found))
        inp = session.get_inputs()[0].name
        rows: dict[str, Any] = {
            "version": path.parent.name,
            "providers": session.get_providers(),
            "run": {},
            "iobinding": {},
        }
        for bs in batches:
            x = bench.inputs(name, bs)
            plain = functools.partial(session.run, None, {inp: x})
            rows["run"][str(bs)] = bench.best_rate(plain, bs, seconds)
            try:
                bound = iobinding_call(session, x, device)
                rows["iobinding"][str(bs)] = bench.best_rate(bound, bs, seconds)
            except Exception as exc:
                rows["iobinding"][str(bs)] = None
                rows.setdefault("iobinding_errors", {})[str(bs)] = str(exc)
            say(
                f"  onnxruntime {name:<7} batch {bs:>5}: run {rows['run'][str(bs)]:>10,.0f}/s, "
                f"iobinding {rows['iobinding'][str(bs)] or 0:>10,.0f}/s"
            )
        models[name] = rows
    return {"device_for_outputs": device, "seconds_per_point": seconds, "models": models}


# --- 4. the service --------------------------------------------------------------------------


def histogram_totals(url: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each of the server's histograms in HISTOGRAMS for `model`, summed over
    its versions, routes and workers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = {key: [0.0, 0.0] for key in HISTOGRAMS}
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for key, name in HISTOGRAMS.items():
            if family.name != name:
                continue
            for s in family.samples:
                if s.labels.get("model") == model and s.name in (f"{name}_sum", f"{name}_count"):
                    totals[key][s.name.endswith("_count")] += s.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


def mean_of(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], key: str
) -> float | None:
    count = after[key][1] - before[key][1]
    return (after[key][0] - before[key][0]) / count if count > 0 else None


def where_time_goes(point: dict[str, Any]) -> dict[str, float | None]:
    """A request's mean latency split: waiting for its batch (queue), the onnxruntime call it
    was part of (compute), the rest of the server's handling (parsing, encoding, routing), and
    what lies outside the server's own clock (loopback, the load generator, accepting)."""
    client, server = point["mean_ms"], point["server_mean_ms"]
    queue, compute = point["queue_mean_ms"], point["compute_mean_ms"]
    if None in (client, server, queue, compute):
        return {}
    rest = server - queue - compute
    return {
        "client_mean_ms": client,
        "queue_ms": queue,
        "compute_ms": compute,
        "server_rest_ms": rest,
        "outside_server_ms": client - server,
        "queue_share": queue / client,
        "compute_share": compute / client,
        "server_rest_share": rest / client,
        "outside_share": (client - server) / client,
    }


def service_point(
    url: str, model: str, items: int, clients: int, seconds: float, warmup: float
) -> dict[str, Any]:
    request = bench.v1_request(model, items)
    # A point that outlives its requests' own timeout has a server that stopped answering.
    limit = seconds + warmup + TIMEOUT_S
    if warmup > 0:  # at most 2 requests per client: 256 clients of 64 items are a long round
        bench.load(url, request, clients, warmup, items, 2 * clients, warmup_s=0, timeout_s=limit)
    before = histogram_totals(url, model)
    r = bench.load(url, request, clients, seconds, items, warmup_s=0, timeout_s=limit)
    after = histogram_totals(url, model)
    ms = [x * 1000 for x in r.latencies]
    ok = r.requests - r.errors
    point: dict[str, Any] = {
        "model": model,
        "items_per_request": items,
        "clients": clients,
        "seconds": r.seconds,
        "requests": r.requests,
        "errors": r.errors,
        "statuses": {str(k): v for k, v in r.statuses.items()},
        "items_per_s": ok * items / r.seconds if r.seconds else 0.0,
        "p50_ms": r.pct(50),
        "p99_ms": r.pct(99),
        "mean_ms": float(np.mean(ms)) if ms else None,
        "mean_batch": mean_of(before, after, "batch"),
    }
    for key in ("queue", "compute", "request"):
        mean = mean_of(before, after, key)
        name = "server_mean_ms" if key == "request" else f"{key}_mean_ms"
        point[name] = None if mean is None else mean * 1000
    point["time"] = where_time_goes(point)
    return point


def wait_for_workers(url: str, count: int, timeout: float = 180.0) -> tuple[int, float]:
    """How many of `count` workers answer, and after how long: the server is ready once worker
    0 is, while the others may still be loading models. New connections go to the workers that
    wait in accept, so /healthz on fresh connections meets every worker that serves."""
    import httpx

    seen: set[int] = set()
    start = time.perf_counter()
    while len(seen) < count and time.perf_counter() - start < timeout:
        seen.add(int(httpx.get(url + "/healthz", timeout=10).json().get("worker", 0)))
        if len(seen) < count:
            time.sleep(0.02)  # a poll, not a wait for something to happen
    return len(seen), round(time.perf_counter() - start, 1)


@dataclass(frozen=True)
class Load:
    """The service points: every model x items per request x clients, each measured for
    `seconds` after `warmup` seconds of the same load."""

    models: list[str]
    items_per_request: list[int]
    clients: list[int]
    seconds: float
    warmup: float


def measure_workers(
    n: int, settings: dict[str, Any], load: Load, raw_rate: Callable[[str, int], float]
) -> dict[str, Any]:
    """One server with `--workers n` under every point of `load`; a point that fails is
    recorded in its place."""
    import httpx

    run: dict[str, Any] = {"workers": n, "points": []}
    say(f"  service --workers {n}: starting")
    with bench.server("--workers", str(n), **settings) as url:
        serving, after = wait_for_workers(url, n)
        run["workers_serving"], run["workers_up_s"] = serving, after
        say(f"  service --workers {n}: {serving} serving after {after} s")
        listed = httpx.get(url + "/v1/models", timeout=30).json()["models"]
        run["providers"] = {f"{m['name']}/{m['version']}": m["provider"] for m in listed}
        for model in load.models:
            warmup = load.warmup  # the first point of a model; the next ones follow its load
            for items in load.items_per_request:
                for c in load.clients:
                    try:
                        p = service_point(url, model, items, c, load.seconds, warmup)
                        warmup = 0.0
                        if p["mean_batch"]:
                            p["raw_batch"] = max(1, round(p["mean_batch"]))
                            p["raw_items_per_s"] = raw_rate(model, p["raw_batch"])
                            p["ratio_to_raw"] = p["items_per_s"] / p["raw_items_per_s"]
                    except Exception as exc:
                        p = {"model": model, "items_per_request": items, "clients": c}
                        p["error"] = f"{type(exc).__name__}: {exc}"
                    p["workers"] = n
                    run["points"].append(p)
                    say("    " + point_line(p))
    return run


def service(
    found: str, providers: list[str], workers: list[int], load: Load, ort_seconds: float
) -> dict[str, Any]:
    # The service's own imports first: without its packages, one line instead of a server that
    # dies at start-up for every worker count.
    import importlib

    importlib.import_module("service.server")
    sessions: dict[str, Any] = {}

    @functools.cache
    def raw_rate(model: str, batch: int) -> float:
        """Raw onnxruntime (`run`, as the server calls it) at the batch the server formed."""
        if model not in sessions:
            sessions[model] = open_session(latest(model), session_providers(found))
        s = sessions[model]
        x = bench.inputs(model, batch)
        return bench.best_rate(
            functools.partial(s.run, None, {s.get_inputs()[0].name: x}), batch, ort_seconds
        )

    settings: dict[str, Any] = {
        "providers": ",".join(providers),
        "max_queue_size": QUEUE_ITEMS,
        "request_timeout_s": TIMEOUT_S,
    }
    runs = []
    for n in workers:
        try:
            runs.append(measure_workers(n, settings, load, raw_rate))
        except Exception as exc:  # this count's server; the next count still runs
            runs.append({"workers": n, "points": [], "error": f"{type(exc).__name__}: {exc}"})
            say(f"  service --workers {n}: FAILED {runs[-1]['error']}")
    # Where the time goes at the best point (most items/s) of each model and request size.
    best = {}
    measured = [p for r in runs for p in r["points"] if "error" not in p]
    for model in load.models:
        for items in load.items_per_request:
            these = [p for p in measured if (p["model"], p["items_per_request"]) == (model, items)]
            if these:
                top = max(these, key=lambda p: p["items_per_s"])
                best[f"{model}, {items} items/request"] = {
                    k: top[k] for k in ("workers", "clients", "items_per_s", "p99_ms", "time")
                }
    return {"settings": settings, "runs": runs, "best": best}


def point_line(p: dict[str, Any]) -> str:
    head = f"{p['model']:<6} {p['items_per_request']:>2} items/req {p['clients']:>3} clients"
    if "error" in p:
        return f"{head}: FAILED {p['error']}"
    raw = (
        f", raw at batch {p['raw_batch']} {p['raw_items_per_s']:,.0f}/s "
        f"(ratio {p['ratio_to_raw']:.2f})"
        if "raw_batch" in p
        else ""
    )
    return (
        f"{head}: {p['items_per_s']:>9,.0f} items/s p50 {p['p50_ms']:.1f} ms p99 "
        f"{p['p99_ms']:.1f} ms errors {p['errors']} mean batch {p['mean_batch'] or 0:.1f}{raw}"
    )


# --- the run ---------------------------------------------------------------------------------


def run_sections(
    report: dict[str, Any], sections: list[tuple[str, Callable[[], Any]]], write: Callable[[], None]
) -> None:
    """Each section into report[name], or its error; the file rewritten after each, so a run
    cut short still leaves everything measured until then."""
    for name, section in sections:
        say(f"{name} ...")
        t0 = time.perf_counter()
        try:
            report[name] = section()
        except KeyboardInterrupt:  # `timeout -s INT`: say which section time ran out in
            report[name] = {"error": "interrupted: the run's time ran out here"}
            report["section_seconds"][name] = round(time.perf_counter() - t0, 1)
            write()
            raise
        except Exception as exc:
            report[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8).splitlines()[-12:],
            }
            say(f"{name}: FAILED {report[name]['error']}")
        report["section_seconds"][name] = round(time.perf_counter() - t0, 1)
        write()


def keep(report: dict[str, Any], path: Path, redone: set[str]) -> None:
    """`--keep`: the sections of the results file at `path` (an earlier run on this machine)
    that this run does not redo go into `report`, and the earlier run is named there."""
    if not path.is_file():
        return
    earlier = json.loads(path.read_text())
    kept = [name for name in SECTIONS if name in earlier and name not in redone]
    for name in kept:
        report[name] = earlier[name]
        report["section_seconds"][name] = earlier.get("section_seconds", {}).get(name)
    report["kept"] = {
        "sections": kept,
        "command": earlier.get("command"),
        "date": earlier.get("date"),
    }
    say(f"kept {', '.join(kept) or 'nothing'} from the run of {earlier.get('date')}")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--providers", default="cuda,cpu", help="in order of preference")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks"), help="where the files go")
    p.add_argument("--sections", default=",".join(SECTIONS), help="a subset, comma-separated")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the other sections of the results file already in --out-dir (a rerun of "
        "what failed or ran out of time)",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="per measured service point")
    p.add_argument("--warmup-seconds", type=float, default=1.0, help="before each service point")
    p.add_argument("--ort-seconds", type=float, default=0.6, help="per raw onnxruntime point")
    p.add_argument("--batches", default="1,16,64,256,1024", help="raw onnxruntime batch sizes")
    p.add_argument("--raw-models", default="pixel,render,locate", help="their latest versions")
    p.add_argument(
        "--parity-models", default="", help="names or name/version (default: every model file)"
    )
    p.add_argument("--parity-batch", type=int, default=256)
    p.add_argument("--workers", default="1,2,4", help="service worker counts")
    p.add_argument("--service-models", default="render,locate")
    p.add_argument("--items", default="64,1", help="items per request")
    p.add_argument("--clients", default="32,256", help="concurrent clients")
    a = p.parse_args(argv)
    bad = [x for x in words(a.providers) if x not in PROVIDERS]
    if bad:
        p.error(f"--providers: {', '.join(bad)} not among {', '.join(PROVIDERS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    providers = words(a.providers)
    chosen = set(words(a.sections))
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        libraries = load_libraries()
    except Exception as exc:  # no onnxruntime at all: say so in a file, not only on a terminal
        error = {"error": f"import onnxruntime: {type(exc).__name__}: {exc}"}
        (out / "gpu-none.json").write_text(json.dumps({**error, "sys_path": sys.path}) + "\n")
        say(f"FAILED {error['error']} (wrote {out / 'gpu-none.json'})")
        return 1
    try:
        found, probe = found_provider(providers)
    except Exception as exc:  # the probe itself failed (not a fallback): measure the CPU
        found, probe = CPU, {"error": f"{type(exc).__name__}: {exc}", "session_providers": [CPU]}
    say(f"found provider: {found} (session providers {probe['session_providers']})")
    stem = out / f"gpu-{SHORT.get(found, found)}"
    report: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "found_provider": found,
        "options": vars(a),
        "section_seconds": {},
    }
    if a.keep:
        keep(report, stem.with_suffix(".json"), chosen)

    def write() -> None:
        report["total_seconds"] = round(time.perf_counter() - START, 1)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float) + "\n")
        try:
            text = markdown(report)
        except Exception as exc:  # the summary must never cost the figures
            text = f"# gpu-check\n\nThe summary failed ({exc!r}); the figures are in the .json.\n"
        stem.with_suffix(".md").write_text(text)

    sections: list[tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: environment(found, probe, libraries)),
        (
            "parity",
            lambda: parity(found, words(a.parity_models) or None, a.parity_batch),
        ),
        (
            "onnxruntime",
            lambda: raw_onnxruntime(found, words(a.raw_models), ints(a.batches), a.ort_seconds),
        ),
        (
            "service",
            lambda: service(
                found,
                providers,
                ints(a.workers),
                Load(
                    words(a.service_models),
                    ints(a.items),
                    ints(a.clients),
                    a.seconds,
                    a.warmup_seconds,
                ),
                a.ort_seconds,
            ),
        ),
    ]
    run_sections(report, [s for s in sections if s[0] in chosen], write)
    say(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md').name}")
    return 0


# --- the human-readable file -----------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    buf = io.StringIO()

    def w(line: str = "") -> None:
        buf.write(line + "\n")

    w(f"# gpu-check: {r['found_provider']}")
    w()
    w(f"`{r['command']}` on {r['date']}, {r.get('total_seconds', 0):.0f} s in all. Generated by")
    w("benchmarks/gpu.py (docs/gpu.md); every figure is in the .json beside this file.")
    w()
    if r.get("kept"):
        k = r["kept"]
        w(f"Sections {', '.join(k['sections'])} are from the run before: `{k['command']}`,")
        w(f"{k['date']}.")
        w()
    for name in SECTIONS:
        if isinstance(r.get(name), dict) and "error" in r[name]:
            w(f"- section **{name} failed**: {r[name]['error']}")
    env = r.get("environment")
    if isinstance(env, dict) and "error" not in env:
        ort = env["onnxruntime"]
        w("## Environment")
        w()
        w(
            f"- provider found: `{env['found_provider']}`; session providers "
            f"{env['probe']['session_providers']}"
        )
        w(
            f"- onnxruntime {ort['version']} ({ort['device']}, build {ort['build']}), "
            f"session options: {ort['session_options']}"
        )
        w(
            f"- GPU (nvidia-smi): {env['nvidia_smi']['gpus']}; CUDA (driver) "
            f"{env['nvidia_smi']['cuda_version']}"
        )
        w(
            f"- CPU: {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB; "
            f"Python {env['python']}"
        )
        w()
    par = r.get("parity")
    if isinstance(par, dict) and "models" in par:
        w("## Parity against CPUExecutionProvider (full canvas)")
        w()
        w("| model | task | items | providers | max abs diff | agreement | metrics (found) |")
        w("|---|---|---:|---|---:|---|---|")
        for key, row in par["models"].items():
            if "error" in row:
                w(f"| {key} | | | | | FAILED: {row['error']} | |")
                continue
            agree = {k: row[k] for k in row if k.endswith(("_vs_cpu", "_agreement", "_diff_px"))}
            w(
                f"| {key} | {row['task']} | {row['items']} | {', '.join(row['providers'])} | "
                f"{max(row['max_abs_diff'].values()):.3g} | {fmt(agree)} | {fmt(row['found'])} |"
            )
        w()
    raw = r.get("onnxruntime")
    if isinstance(raw, dict) and raw.get("models"):
        batches = list(next(iter(raw["models"].values()))["run"])
        w(f"## Raw onnxruntime (items/s; IOBinding outputs on `{raw['device_for_outputs']}`)")
        w()
        w("| model | mode | " + " | ".join(f"batch {b}" for b in batches) + " |")
        w("|---|---|" + "---:|" * len(batches))
        for name, row in raw["models"].items():
            for mode in ("run", "iobinding"):
                cells = " | ".join(f"{row[mode].get(b) or 0:,.0f}" for b in batches)
                w(f"| {name} v{row['version']} | {mode} | {cells} |")
        w()
    svc = r.get("service")
    if isinstance(svc, dict) and "runs" in svc:
        w(f"## The service (settings {svc['settings']})")
        w()
        w(
            "| workers | model | items/req | clients | items/s | p50 ms | p99 ms | errors "
            "| mean batch | raw at that batch | ratio |"
        )
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for run in svc["runs"]:
            if "error" in run:
                w(f"| {run['workers']} | FAILED: {run['error']} |||||||||")
            for p in run["points"]:
                if "error" in p:
                    w(
                        f"| {run['workers']} | {p['model']} | {p['items_per_request']} | "
                        f"{p['clients']} | FAILED: {p['error']} |||||||"
                    )
                    continue
                w(
                    f"| {run['workers']} | {p['model']} | {p['items_per_request']} | "
                    f"{p['clients']} | {p['items_per_s']:,.0f} | {p['p50_ms']:.1f} | "
                    f"{p['p99_ms']:.1f} | {p['errors']} | {p['mean_batch'] or 0:.1f} | "
                    f"{p.get('raw_items_per_s', 0):,.0f} | {p.get('ratio_to_raw', 0):.2f} |"
                )
        providers = {k: v for run in svc["runs"] for k, v in run.get("providers", {}).items()}
        w()
        up = [
            f"{run['workers_serving']} of {run['workers']} after {run['workers_up_s']} s"
            for run in svc["runs"]
            if "workers_serving" in run
        ]
        w(f"Workers serving before the load: {'; '.join(up)}.")
        w()
        w(f"Providers in /v1/models: {fmt(providers)}")
        w()
        w(
            "Ratio: the service's items/s over raw onnxruntime's (one session, `run`) at the "
            "batch the server formed, measured in the same run; with several workers, several "
            "sessions run side by side."
        )
        w()
        for case, b in svc.get("best", {}).items():
            t = b["time"]
            if not t:
                continue
            w(
                f"Where the time goes, {case} at its best ({b['workers']} workers, "
                f"{b['clients']} clients, {b['items_per_s']:,.0f} items/s, p99 "
                f"{b['p99_ms']:,.1f} ms): of a mean {t['client_mean_ms']:.2f} ms, "
                f"queue {t['queue_ms']:.2f} ms ({t['queue_share']:.0%}), compute "
                f"{t['compute_ms']:.2f} ms ({t['compute_share']:.0%}), the rest of the server "
                f"{t['server_rest_ms']:.2f} ms ({t['server_rest_share']:.0%}), outside the "
                f"server {t['outside_server_ms']:.2f} ms ({t['outside_share']:.0%})."
            )
            w()
    return buf.getvalue()


def fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


if __name__ == "__main__":
    restart_with_libraries(sys.argv[1:])
    raise SystemExit(main())
