"""`coordconv serve --workers N`: one supervisor and N worker processes on one port.

The supervisor binds the HTTP socket once and hands it to every worker (the kernel gives each
new connection to a worker that is waiting in accept); gRPC workers share their port with
SO_REUSEPORT. Each worker is a whole server (service/server.py) with its own onnxruntime sessions
and batchers; service/scaling/cluster.py keeps model control, statistics and /metrics the same
across them.

- Start-up: worker 0 starts first, so a bad repository is one line and exit 1 as with one
  process; the others start once it serves.
- SIGTERM or SIGINT: passed to every worker; each drains as one process would (not ready at
  once, serving on for DRAIN_DELAY_S after SIGTERM, then GRACE_S); the supervisor exits 0 when
  all of them did.
- A worker that dies is started again; it replays the control log (the versions its siblings
  loaded, not what the disk holds now), so it serves what its siblings serve.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from service.scaling.cluster import METRICS_DIR, WorkerInfo
from service.settings import Settings, usable_cores

log = logging.getLogger("coordconv.workers")
RESTART_DELAY_S = 1.0  # a worker that keeps dying is not restarted in a tight loop


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def worker_settings(settings: Settings, cores: int) -> dict[str, Any]:
    """What each worker runs with: the settings as given, but with onnxruntime's threads shared
    out among the workers unless INTRA_OP_THREADS is set (onnxruntime's own choice, one thread
    per core in every worker, puts N times as many threads as cores to work: a longer tail)."""
    data = settings.model_dump(mode="json")
    if settings.intra_op_threads == 0:
        data["intra_op_threads"] = max(1, cores // settings.workers)
    return data


def _worker(data: dict[str, Any], sock: socket.socket, info: WorkerInfo) -> None:
    """A worker process's entry point (spawned: a fresh interpreter)."""
    from service.logs import configure_logging
    from service.server import serve

    settings = Settings(**data)
    configure_logging(settings.log_level, settings.log_format, worker=info.index)
    raise SystemExit(serve(settings, sock, info))


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.workers
        self.run_dir = Path(tempfile.mkdtemp(prefix="coordconv-"))
        (self.run_dir / METRICS_DIR).mkdir()
        # Read by prometheus_client when a worker imports it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.run_dir / METRICS_DIR)
        self.sock = bind(settings.host, settings.port)
        self.data = worker_settings(settings, usable_cores())
        self.data["port"] = self.sock.getsockname()[1]
        self.context = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.stopping = False
        # How long a worker may take to stop after SIGTERM: it serves on for DRAIN_DELAY_S,
        # then drains within GRACE_S.
        self.stop_s = settings.drain_delay_s + settings.grace_s + 10
        self.stopped_at = 0.0
        self.signal_name = ""
        self.loading: list[int] = []  # workers not yet serving when the stop came

    def spawn(self, index: int) -> BaseProcess:
        info = WorkerInfo(index, self.count, self.run_dir)
        proc = self.context.Process(
            target=_worker, args=(self.data, self.sock, info), name=f"coordconv-worker-{index}"
        )
        proc.start()
        self.procs[index] = proc
        return proc

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        first, self.stopping = not self.stopping, True
        if first:
            self.stopped_at = time.monotonic()
            self.signal_name = signal.Signals(sig).name
            self.loading = [i for i in range(self.count) if not self._serving(i)]
            log.info("%s: stopping %d workers", self.signal_name, self.count)
        for proc in self.procs.values():
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    def _serving(self, index: int) -> bool:
        """Worker `index` has started serving (its socket to its siblings exists)."""
        return WorkerInfo(index, self.count, self.run_dir).socket_path(index).exists()

    def _exit_code(self, codes: list[int | None]) -> int:
        """0 when every worker stopped cleanly: exit 0, or killed by the SIGTERM this
        supervisor passed on before its signal handlers were up (a worker still starting).
        Stopped while some were still loading: one line says so."""
        clean = all(c == 0 or (self.stopping and c == -signal.SIGTERM) for c in codes)
        if clean and self.stopping and self.loading:
            print(
                f"coordconv serve: stopped by {self.signal_name} while workers "
                f"{', '.join(map(str, self.loading))} of {self.count} were still loading "
                "models",
                file=sys.stderr,
            )
        return 0 if clean else 1

    def _first_worker_up(self, proc: BaseProcess) -> bool:
        """Wait until worker 0 serves (its socket to its siblings exists) or exits."""
        while proc.is_alive() and not self.stopping:
            if self._serving(0):
                return True
            time.sleep(0.05)
        return False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        try:
            first = self.spawn(0)
            if not self._first_worker_up(first):
                first.join(self.stop_s)
                if self.stopping:
                    return self._exit_code([first.exitcode])
                return first.exitcode or 0
            for index in range(1, self.count):
                self.spawn(index)
            log.info(
                "%d workers serving http://%s:%d%s",
                self.count,
                self.settings.host,
                self.data["port"],
                f" and gRPC on port {self.settings.grpc_port}" if self.settings.grpc_port else "",
            )
            return self._watch()
        finally:
            if not self.stopping:
                self._signal(signal.SIGTERM, None)
            for proc in self.procs.values():
                proc.join(self.stop_s)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            self.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch(self) -> int:
        from prometheus_client import multiprocess

        started: dict[int, float] = dict.fromkeys(self.procs, time.monotonic())
        while not self.stopping:
            time.sleep(0.2)
            for index, proc in list(self.procs.items()):
                if proc.is_alive() or self.stopping:
                    continue
                log.error(
                    "worker %d (pid %s) exited with %s; starting it again",
                    index,
                    proc.pid,
                    proc.exitcode,
                )
                if proc.pid is not None:  # its live gauges no longer count
                    multiprocess.mark_process_dead(proc.pid, str(self.run_dir / METRICS_DIR))
                time.sleep(max(0.0, started[index] + RESTART_DELAY_S - time.monotonic()))
                if not self.stopping:
                    self.spawn(index)
                    started[index] = time.monotonic()
        # The workers stop accepting when DRAIN_DELAY_S is over; this process's copy of the
        # listening socket would keep it open, queueing connections that nobody accepts.
        deadline = self.stopped_at + self.settings.drain_delay_s
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        self.sock.close()
        codes = []
        for proc in self.procs.values():
            proc.join(self.stop_s)
            codes.append(proc.exitcode)
        return self._exit_code(codes)


def run(settings: Settings) -> int:
    return Supervisor(settings).run()
