"""`make soak`: the service at about 70% of its measured capacity for SOAK_SECONDS (default 600),
one item per request from 32 paced clients on loopback. Reports per-minute throughput, p50/p99,
errors and the server's RSS, and writes them into docs/reliability.md between markers."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import loadgen
from benchmarks.bench import load, server, v1_request

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def paced(
    port: int, request: bytes, rate: float, seconds: float, workers: int, window: float, pid: int
) -> list[dict[str, Any]]:
    """`workers` connections, each sending at rate/workers per second; stats per window."""
    interval = workers / rate
    start = time.perf_counter()
    stats: list[dict[str, Any]] = []
    lat: list[float] = []
    errors = [0]

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        next_t = start + k * interval / workers
        try:
            while (now := time.perf_counter()) - start < seconds:
                if next_t > now:
                    await asyncio.sleep(next_t - now)
                next_t += interval
                t0 = time.perf_counter()
                writer.write(request)
                status = await loadgen._read_response(reader)
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors[0] += 1
        finally:
            writer.close()

    async def sampler() -> None:
        while time.perf_counter() - start < seconds:
            await asyncio.sleep(window)
            snap, lat[:] = list(lat), []
            stats.append(
                {
                    "minute": len(stats) + 1,
                    "rps": len(snap) / window,
                    "p50_ms": float(np.percentile(snap, 50) * 1000) if snap else float("nan"),
                    "p99_ms": float(np.percentile(snap, 99) * 1000) if snap else float("nan"),
                    "errors": errors[0],
                    "rss_kib": rss_kib(pid),
                }
            )
            errors[0] = 0
            s = stats[-1]
            print(
                f"  window {s['minute']}: {s['rps']:.0f} req/s, p50 {s['p50_ms']:.1f} ms, "
                f"p99 {s['p99_ms']:.1f} ms, errors {s['errors']}, RSS {s['rss_kib']} KiB",
                flush=True,
            )

    await asyncio.gather(sampler(), *[worker(k) for k in range(workers)])
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--window", type=float, default=60)
    p.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    p.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    a = p.parse_args(argv)
    request = v1_request("render", 1)
    with server() as url:
        port = int(url.rsplit(":", 1)[1])
        cap = load(url, request, 32, 5.0)
        rate = a.load * cap.rps
        print(
            f"capacity {cap.rps:.0f} req/s (32 clients, closed loop); soaking at {rate:.0f} "
            f"req/s for {a.seconds:.0f} s",
            flush=True,
        )
        import subprocess

        pid = int(
            subprocess.run(
                ["pgrep", "-f", "--", f"serve --port {port}"], capture_output=True, text=True
            ).stdout.split()[0]
        )
        rss0 = rss_kib(pid)
        stats = asyncio.run(paced(port, request, rate, a.seconds, 32, a.window, pid))
    write(Path(a.out), cap.rps, rate, a.seconds, rss0, stats)
    return 0


def write(
    path: Path, capacity: float, rate: float, seconds: float, rss0: int, stats: list[dict[str, Any]]
) -> None:
    rss_growth = 100 * (stats[-1]["rss_kib"] - stats[0]["rss_kib"]) / max(stats[0]["rss_kib"], 1)
    lines = [
        BEGIN,
        "",
        f"Soak ({time.strftime('%Y-%m-%d')}): `render`, one item per request, 32 paced "
        f"clients at {rate:.0f} req/s = {100 * rate / capacity:.0f}% of the {capacity:.0f} "
        f"req/s measured just before, for {seconds / 60:.0f} min. Errors in total: "
        f"{sum(s['errors'] for s in stats)}. RSS {rss0} KiB at start; growth from the first "
        f"to the last window {rss_growth:+.1f}%.",
        "",
        "| window | req/s | p50 ms | p99 ms | errors | RSS KiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s['minute']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
        f"{s['errors']} | {s['rss_kib']} |"
        for s in stats
    ]
    lines += ["", END]
    text = path.read_text() if path.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + "\n".join(lines) + tail)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
