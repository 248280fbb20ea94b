"""The connection-level figures of docs/reliability.md, against a `coordconv serve` process:

1. 1,000 idle and 300 slow-header connections held open: /healthz latency (p50/p99 of 200
   probes) and whether inference requests are still answered correctly.
2. Four clients each sending a 64 MB JSON body: /healthz latency while they are parsed.
3. Clients that never read their answers (64 items of JSON arrays each, about 3 MB): the
   server's RSS before, during and after.

`python -m benchmarks.hardening` prints the figures (and --json writes them).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from typing import Any

import httpx
import numpy as np

from benchmarks.bench import server
from benchmarks.soak import rss_kib
from training import data, metrics


def server_pid(port: int) -> int:
    """The pid listening on `port` (from /proc/net/tcp and the fds of our children)."""
    import os

    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
                inode = parts[9]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError("no server process found")


def probe(url: str, n: int = 200, pause: float = 0.01) -> dict[str, float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(pause)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}


def idle_and_slow(url: str, port: int) -> dict[str, Any]:
    opened = []
    for i in range(1300):
        s = socket.create_connection(("127.0.0.1", port))
        if i >= 1000:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        opened.append(s)
    try:
        health = probe(url)
        coords = data.centres()[::157]
        r = httpx.post(url + "/v1/render", json={"coords": coords.tolist(), "format": "array"})
        iou = float(
            metrics.iou(np.asarray(r.json()["images"], np.float32), data.squares(coords)).min()
        )
    finally:
        for s in opened:
            s.close()
    return {
        **health,
        "inference_status": r.status_code,
        "inference_min_iou": iou,
        "connections": 1300,
    }


def big_bodies(url: str) -> dict[str, Any]:
    row = "[" + ",".join(["0.0"] * 64) + "]"
    image = "[" + ",".join([row] * 64) + "]"
    n = 64 * 1024 * 1024 // (len(image) + 1) - 2
    body = ('{"images": [' + ",".join([image] * n) + "]}").encode()
    statuses: list[int] = []

    def send() -> None:
        r = httpx.post(
            url + "/v1/locate",
            content=body,
            timeout=300,
            headers={"Content-Type": "application/json"},
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    health = probe(url, n=200, pause=0.02)
    for t in threads:
        t.join()
    return {**health, "body_mb": len(body) / 1e6, "images_per_body": n, "statuses": statuses}


def non_readers(url: str, port: int, pid: int, clients: int = 50, waves: int = 3) -> dict[str, Any]:
    """Waves of clients that send a request (64 renders as JSON arrays, about 3 MB of answer)
    and never read; the server runs with SEND_TIMEOUT_S=5 and cuts each off."""
    body = json.dumps({"coords": data.centres()[:64].tolist(), "format": "array"}).encode()
    request = (
        b"POST /v1/render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    before = rss_kib(pid)
    after_wave = []
    for _ in range(waves):
        opened = []
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(request)
            opened.append(s)
        time.sleep(8)  # the answers are ready and stuck, then cut off after 5 s
        after_wave.append(rss_kib(pid) - before)
        for s in opened:
            s.close()
    return {
        "clients_per_wave": clients,
        "waves": waves,
        "rss_before_kib": before,
        "growth_after_each_wave_kib": after_wave,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    figures: dict[str, Any] = {}
    with server(providers="cpu", send_timeout_s=5) as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(port)
        figures["baseline"] = probe(url)
        print("healthz alone:", figures["baseline"], flush=True)
        figures["idle_and_slow"] = idle_and_slow(url, port)
        print("1000 idle + 300 slow-header connections:", figures["idle_and_slow"], flush=True)
        figures["big_bodies"] = big_bodies(url)
        print("4 clients x 64 MB JSON:", figures["big_bodies"], flush=True)
        figures["non_readers"] = non_readers(url, port, pid)
        print("clients that never read:", figures["non_readers"], flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
