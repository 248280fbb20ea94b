"""A small closed-loop HTTP/1.1 load generator for loopback benchmarks.

`concurrency` workers each hold one keep-alive connection and send prepared requests back to back;
the run stops after `requests` requests or `seconds`, whichever comes first. It speaks just enough
HTTP/1.1 (Content-Length bodies) to measure the server rather than a client library, and refuses
any host that is not loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    items_per_request: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def build_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    requests: int,
    seconds: float,
    items_per_request: int = 1,
) -> Result:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to load {host}: benchmarks target loopback only")
    result = Result(items_per_request=items_per_request)
    deadline = time.perf_counter() + seconds
    budget = [requests]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while budget[0] > 0 and time.perf_counter() < deadline:
                budget[0] -= 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - t0)
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 200:
                    result.errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    result.seconds = time.perf_counter() - start
    return result
