"""Every way out of `coordconv serve` is bounded by DRAIN_DELAY_S + GRACE_S: SIGTERM sent to a
real process at each moment a user can hit (while a model loads and warms up, while the process
is still loading its start-up models, with a trace collector that refuses or never answers,
while a second worker is still loading, under load), each checked for the exit time, the exit
status, the one line that says why, and that every request answered was answered right (a load
cut short answers 503 in the route's JSON, never a 500; a control call on another model never
waits behind a warm-up).

The figures of docs/reliability.md ("Shutdown in every state") come from this module:
`pytest -s tests/system/test_shutdown.py` prints one line per case."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import MODELS, TLS, ServeProcess, free_port, wait_for

DRAIN_DELAY_S, GRACE_S = 1.0, 3.0
# Past DRAIN_DELAY_S + GRACE_S: the interpreter's own exit (closing sessions, threads) on a
# shared 2-core machine.
EXIT_SLACK_S = 3.0
BOUND_S = DRAIN_DELAY_S + GRACE_S + EXIT_SLACK_S
# A warm-up that would take minutes: render, 64 random points, run this many times.
LONG_WARMUP = {
    "name": "long",
    "batch_size": 64,
    "count": 1000,
    "inputs": {"coords": {"data_type": "TYPE_FP32", "dims": [2], "random_data": True}},
}


def warmup_text(count: int) -> str:
    sample = (
        'name: "long" batch_size: 64 count: COUNT inputs { key: "coords" value: '
        "{ data_type: TYPE_FP32 dims: [ 2 ] random_data: true } }"
    )
    return "model_warmup [ { " + sample.replace("COUNT", str(count)) + " } ]\n"


def repository(root: Path, warmup_count: int = 0) -> Path:
    """locate and render; render's config asks for a long warm-up when `warmup_count`."""
    repo = root / "models"
    for name in ("locate", "render"):
        shutil.copytree(MODELS / name, repo / name)
    if warmup_count:
        config = repo / "render" / "config.pbtxt"
        config.write_text(config.read_text() + warmup_text(warmup_count))
    return repo


@contextmanager
def serving(
    repo: Path, ready: bool = True, env: dict[str, str] | None = None, **settings: str | float
) -> Iterator[ServeProcess]:
    """`coordconv serve` on `repo` with the drain settings above, its output collected as it
    comes (a test waits for a line instead of sleeping)."""
    drain = {"drain_delay_s": DRAIN_DELAY_S, "grace_s": GRACE_S}
    p = ServeProcess(env=env, settings={"model_dir": repo, **drain, **settings})
    try:
        if ready:
            p.wait_ready()
        yield p
    finally:
        p.kill()


def report(case: str, code: int, seconds: float) -> None:
    print(f"\nSIGTERM {case}: exit {code} after {seconds:.1f} s (bound {BOUND_S:g} s)")


def loading(url: str, name: str) -> bool:
    index = httpx.post(url + "/v2/repository/index", json={}, timeout=5, verify=TLS).json()
    return any(e["name"] == name and e["state"] == "LOADING" for e in index)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_load_answers_it_503_and_exits_in_time(
    tmp_path: Path, workers: int
) -> None:
    """The issue's case: explicit mode, a load whose override asks for 1,000 warm-up runs of 64
    items, SIGTERM once it warms up. Before: a plain-text 500 and an exit 152 s later; with
    --workers, an unload of another model waited behind the warm-up."""
    repo = repository(tmp_path)
    with serving(
        repo,
        model_control_mode="explicit",
        load_model="locate",
        limit_warmup_s=600,
        workers=workers,
    ) as p:
        render = _render_config()
        render["model_warmup"] = [LONG_WARMUP]
        answers: dict[str, httpx.Response] = {}

        def load() -> None:
            answers["load"] = httpx.post(
                p.url + "/v2/repository/models/render/load",
                json={"parameters": {"config": json.dumps(render)}},
                timeout=120,
                verify=TLS,
            )

        loader = threading.Thread(target=load)
        loader.start()
        wait_for(lambda: loading(p.url, "render"), timeout=60)
        # A control call on another model meanwhile does not wait behind the warm-up.
        started = time.monotonic()
        unload = httpx.post(p.url + "/v2/repository/models/locate/unload", timeout=60, verify=TLS)
        assert unload.status_code == 200 and time.monotonic() - started < 5, unload.text
        code, seconds = p.terminate()
        loader.join(30)
    report(f"during a model's warm-up (explicit load, {workers} worker(s))", code, seconds)
    assert code == 0 and seconds < BOUND_S, p.output
    r = answers["load"]
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
    assert "retry-after" in r.headers
    assert r.json()["error"].endswith(
        "the server is shutting down: the load of 'render' was cancelled; load it on a running "
        "server"
    )
    assert "Traceback" not in p.output


def _render_config() -> dict[str, object]:
    """render's config.pbtxt as JSON (the server does not serve render yet), parsed by the
    server's own reader."""
    from service.models import config as model_config

    parsed = model_config.from_text(
        (MODELS / "render" / "config.pbtxt").read_text(), "render", True
    )
    assert parsed is not None
    return model_config.to_json(parsed)


def test_sigterm_while_loading_the_start_up_models_exits_0_with_one_line(tmp_path: Path) -> None:
    repo = repository(tmp_path, warmup_count=1000)
    with serving(repo, ready=False, limit_warmup_s=600) as p:
        p.wait_line("loaded locate")  # render's long warm-up runs next
        code, seconds = p.terminate()
    report("while loading the start-up models", code, seconds)
    assert code == 0 and seconds < BOUND_S, p.output
    said = [line for line in p.lines if line.startswith("coordconv serve:")]
    assert said == ["coordconv serve: stopped by SIGTERM while loading models, before serving"]
    assert "Traceback" not in p.output


def test_sigterm_with_a_worker_still_loading_exits_0_with_one_line(tmp_path: Path) -> None:
    """--workers 2: worker 0 serves (/readyz 200) while worker 1 still warms up its models.
    Worker 1 starts once worker 0 serves, so worker 0 warms up in full first: 40 runs of render's
    two versions, about 10 s on one core, and the signal comes when worker 1 has loaded locate
    and is in render's warm-up."""
    repo = repository(tmp_path, warmup_count=40)
    with serving(repo, ready=False, workers=2, limit_warmup_s=600) as p:
        p.wait_ready(timeout=300)
        p.wait_line("loaded locate: serving versions ['1', '2'] [worker=1]")
        code, seconds = p.terminate()
    report("with worker 1 of 2 still loading", code, seconds)
    assert code == 0 and seconds < BOUND_S, p.output
    said = [line for line in p.lines if line.startswith("coordconv serve:")]
    assert said == [
        "coordconv serve: stopped by SIGTERM while workers 1 of 2 were still loading models"
    ]
    assert "Traceback" not in p.output


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("collector", ["refuses", "never answers"])
def test_sigterm_with_a_dead_or_silent_trace_collector_exits_in_time(
    tmp_path: Path, silent_collector: int, protocol: str, collector: str
) -> None:
    port = free_port() if collector == "refuses" else silent_collector
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # the spans are still buffered at the signal
    }
    with serving(repository(tmp_path), env=otel) as p:
        for i in range(5):
            r = httpx.post(
                p.url + "/v1/render", json={"coords": [[10 + i, 20]]}, timeout=30, verify=TLS
            )
            assert r.status_code == 200
        code, seconds = p.terminate()
    report(f"with an OTLP/{protocol} collector that {collector}", code, seconds)
    assert code == 0 and seconds < BOUND_S, p.output


def test_sigterm_under_load_answers_every_request_right_and_exits_in_time(tmp_path: Path) -> None:
    """16 clients render back to back through the signal: every 200 is the model's own image,
    everything else is a 503 with Retry-After or a connection the server never accepted."""
    session = ort.InferenceSession(
        str(MODELS / "render" / "2" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    outcomes: list[str] = []
    wrong: list[str] = []
    stop = threading.Event()
    with serving(repository(tmp_path)) as p:

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=p.url, timeout=30, verify=TLS) as c:
                while not stop.is_set():
                    point = rng.integers(0, 64, 2).astype(np.float32)
                    try:
                        r = c.post(
                            "/v1/render",
                            json={"coords": [point.tolist()], "format": "array"},
                            headers={"Accept": "application/x-npy"},
                        )
                    except httpx.ConnectError:
                        outcomes.append("refused")
                        continue
                    except httpx.TransportError as exc:
                        outcomes.append(type(exc).__name__)
                        continue
                    outcomes.append(str(r.status_code))
                    if r.status_code == 200:
                        got = np.load(io.BytesIO(r.content))
                        want = session.run(None, {"coords": point[None]})[0]
                        if not np.allclose(got, want, atol=1e-5):
                            wrong.append(f"{point}")
                    elif r.status_code != 503 or "retry-after" not in r.headers:
                        wrong.append(f"{r.status_code} {r.text[:80]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 100, timeout=60)
        code, seconds = p.terminate()
        stop.set()
        for t in threads:
            t.join(60)
    report(
        f"under load ({len(outcomes)} requests, {outcomes.count('200')} answered 200)",
        code,
        seconds,
    )
    assert code == 0 and seconds < BOUND_S, p.output
    assert not wrong, wrong[:5]
    assert set(outcomes) <= {"200", "503", "refused"}, sorted(set(outcomes))
