"""Triton's CPU and GPU gauges, read when /metrics is scraped (Triton polls them every 2 s; a
scrape reads them fresh instead, off the event loop):

- `nv_cpu_utilization` (0.0-1.0, all cores, since the previous scrape: Triton's formula over
  /proc/stat), `nv_cpu_memory_total_bytes` and `nv_cpu_memory_used_bytes` (MemTotal, and MemTotal
  less MemAvailable, from /proc/meminfo). Linux only, as in Triton.
- per GPU, label `gpu_uuid`: `nv_gpu_utilization` (0.0-1.0), `nv_gpu_memory_total_bytes`,
  `nv_gpu_memory_used_bytes`, `nv_gpu_power_usage` and `nv_gpu_power_limit` (watts), and
  `nv_energy_consumption` (joules since this process started), through NVML (the
  `nvidia-ml-py` package, imported only here). Without the package, the driver or a GPU there
  are no GPU series; a reading a GPU does not support (power on some boards) is left out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("coordconv.metrics")
PROC = Path("/proc")


def read_cpu(proc: Path = PROC) -> tuple[int, int] | None:
    """(busy, idle) jiffies of all cores from /proc/stat: busy is user, nice, system, irq,
    softirq and steal; idle is idle and iowait (Triton's split)."""
    try:
        first = (proc / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return user + nice + system + irq + softirq + steal, idle + iowait


def read_memory(proc: Path = PROC) -> tuple[int, int] | None:
    """(total, used) bytes from /proc/meminfo: used is MemTotal less MemAvailable."""
    try:
        lines = (proc / "meminfo").read_text().splitlines()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            kb[key] = int(rest.split()[0])
    if len(kb) != 2:
        return None
    total, available = kb["MemTotal"] * 1024, kb["MemAvailable"] * 1024
    return total, max(total - available, 0)


class Gpus:
    """The GPUs NVML sees, with the energy reading each started from."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.devices: list[tuple[str, Any, int | None]] = []  # uuid, handle, energy at start (mJ)
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            start = self._read(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            self.devices.append((uuid, handle, start))

    def _read(self, call: Callable[[Any], Any], handle: Any) -> Any:
        try:
            return call(handle)
        except self.nvml.NVMLError:  # not supported on this board, or the GPU fell off the bus
            return None

    def families(self) -> list[Metric]:
        nvml = self.nvml
        util = GaugeMetricFamily(
            "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"]
        )
        total = GaugeMetricFamily(
            "nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"]
        )
        used = GaugeMetricFamily(
            "nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"]
        )
        power = GaugeMetricFamily(
            "nv_gpu_power_usage", "GPU power usage in watts", labels=["gpu_uuid"]
        )
        limit = GaugeMetricFamily(
            "nv_gpu_power_limit", "GPU power management limit in watts", labels=["gpu_uuid"]
        )
        energy = GaugeMetricFamily(  # declared `counter` in the text (service/metrics)
            "nv_energy_consumption",
            "GPU energy consumption in joules since the server started",
            labels=["gpu_uuid"],
        )
        for uuid, handle, energy_start in self.devices:
            rates = self._read(nvml.nvmlDeviceGetUtilizationRates, handle)
            if rates is not None:
                util.add_metric([uuid], rates.gpu / 100)
            memory = self._read(nvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                total.add_metric([uuid], memory.total)
                used.add_metric([uuid], memory.used)
            milliwatts = self._read(nvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                power.add_metric([uuid], milliwatts / 1000)
            milliwatts = self._read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            if milliwatts is not None:
                limit.add_metric([uuid], milliwatts / 1000)
            millijoules = self._read(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if millijoules is not None and energy_start is not None:
                energy.add_metric([uuid], (millijoules - energy_start) / 1000)
        return [f for f in (util, total, used, power, limit, energy) if f.samples]


_gpus: Gpus | None = None
_gpus_tried = False
_gpus_lock = threading.Lock()


def gpus() -> Gpus | None:
    """This process's GPUs through NVML (looked for once per process), or None without the
    package, the driver or a GPU."""
    global _gpus, _gpus_tried
    with _gpus_lock:
        if not _gpus_tried:
            _gpus_tried = True
            _gpus = _open_nvml()
        return _gpus


def _open_nvml() -> Gpus | None:
    try:
        import pynvml
    except ImportError:
        log.debug("nvidia-ml-py is not installed: no GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
        found = Gpus(pynvml)
    except Exception as exc:  # NVMLError: no driver, no library, no GPU
        log.debug("no GPU metrics: %s", exc)
        return None
    return found if found.devices else None


class SystemCollector(Collector):
    """CPU utilisation and memory, and the GPUs', at each scrape."""

    def __init__(self, proc: Path = PROC, gpu: Gpus | Literal["auto"] | None = "auto") -> None:
        """`gpu`: "auto" looks for NVML's GPUs at the first scrape; None: no GPU series."""
        self.proc = proc
        self._gpu = gpu
        self._lock = threading.Lock()  # two scrapes at once
        self._last_cpu = read_cpu(proc)

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; nothing to check for clashes

    def collect(self) -> Iterator[Metric]:
        cpu = read_cpu(self.proc)
        if cpu is not None:
            with self._lock:
                last, self._last_cpu = self._last_cpu, cpu
            busy, idle = (max(a - b, 0) for a, b in zip(cpu, last or (0, 0), strict=True))
            yield GaugeMetricFamily(
                "nv_cpu_utilization",
                "CPU utilization rate [0.0 - 1.0]",
                value=busy / (busy + idle) if busy + idle else 0.0,
            )
        memory = read_memory(self.proc)
        if memory is not None:
            yield GaugeMetricFamily(
                "nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory[0]
            )
            yield GaugeMetricFamily(
                "nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=memory[1]
            )
        if self._gpu == "auto":
            self._gpu = gpus()
        if isinstance(self._gpu, Gpus):
            yield from self._gpu.families()
