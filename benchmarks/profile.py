"""A flame graph of the service under load (`make profile`): `coordconv serve` on a free port,
the benchmark's case (b) for one model (one item per request from 32 clients, batching on), and
py-spy sampling the server for the whole measured run. Writes benchmarks/flame-LABEL.svg and prints
the throughput measured while sampling (py-spy costs a little of it).

    python -m benchmarks.profile --label before --model render --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks import bench, loadgen

ROOT = Path(__file__).resolve().parent.parent


def server_pid(url: str) -> int:
    """The pid listening on the URL's port (the `coordconv serve` process)."""
    port = int(url.rsplit(":", 1)[1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inode = fields[9]
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                            return int(pid)
                    except OSError:
                        continue
    raise RuntimeError(f"nothing listens on port {port}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--label", required=True, help="the flame graph's name: flame-LABEL.svg")
    p.add_argument("--model", default="render", choices=bench.MODELS)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--items", type=int, default=1, help="items per request (case (a): 64)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--gil", action="store_true", help="only threads holding the GIL")
    p.add_argument(
        "--collapsed", action="store_true", help="collapsed stacks (flame-LABEL.txt) instead of SVG"
    )
    a = p.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    out = ROOT / "benchmarks" / f"flame-{a.label}.{'txt' if a.collapsed else 'svg'}"
    request = bench.v1_request(a.model, a.items)
    with bench.server(providers="cpu") as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(url)
        asyncio.run(loadgen.run("127.0.0.1", port, request, a.concurrency, 4 * a.concurrency, 5))
        record = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(a.rate),
                "--duration",
                str(int(a.seconds)),
                "--format",
                "raw" if a.collapsed else "flamegraph",
                "--output",
                str(out),
                "--nonblocking",
                *(["--gil"] if a.gil else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)  # py-spy attaches
        result: list[loadgen.Result] = []
        t = threading.Thread(
            target=lambda: result.append(
                asyncio.run(
                    loadgen.run(
                        "127.0.0.1", port, request, a.concurrency, 10**7, a.seconds - 1, a.items
                    )
                )
            )
        )
        t.start()
        t.join()
        log, _ = record.communicate(timeout=a.seconds + 60)
        if record.returncode != 0:
            print(f"profile: py-spy failed:\n{log}", file=sys.stderr)
            return 1
        r = result[0]
        stats = httpx.get(url + "/metrics").text
        batches = re.findall(
            rf'coordconv_execution_count_total{{model="{a.model}".*}} (\S+)', stats
        )
        print(
            f"{a.label}: {r.items_per_s:,.0f} items/s while sampling, p99 {r.pct(99):.1f} ms, "
            f"{r.errors} errors, executions {batches}; flame graph: {out.relative_to(ROOT)}"
        )
        # The same load without py-spy: the event loop's (the main thread's) CPU per request.
        before = (thread_cpu_s(pid, pid), process_cpu_s(pid))
        r = asyncio.run(
            loadgen.run("127.0.0.1", port, request, a.concurrency, 10**7, a.seconds, a.items)
        )
        loop_s, all_s = thread_cpu_s(pid, pid) - before[0], process_cpu_s(pid) - before[1]
        print(
            f"{a.label}: unsampled {r.items_per_s:,.0f} items/s, p99 {r.pct(99):.1f} ms; event "
            f"loop {loop_s / max(r.requests, 1) * 1e3:.3f} ms CPU per request; the server "
            f"process {all_s / r.seconds:.2f} cores"
        )
    return 0


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (/proc)."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
