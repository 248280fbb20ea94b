"""The batch client against a real uvicorn: round trips, resumable outputs after kills and
server restarts, retries with Retry-After, per-item failures, bad input files."""

from __future__ import annotations

import asyncio
import csv
import json
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
import numpy as np
import pytest
import uvicorn
from PIL import Image

from client import CoordConvClient
from client.api import ClientError, backoff
from client.batch import run
from client.files import read_coords, read_images
from tests.helpers import ROOT, TLS, LiveServer, free_port, wait_for
from training import data, metrics


def write_coords(path: Path, n: int, seed: int = 0, ids: bool = True) -> np.ndarray:
    c = data.centres()[np.random.default_rng(seed).choice(3136, n, replace=False)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "x", "y"] if ids else ["x", "y"])
        for i, (x, y) in enumerate(c.tolist()):
            w.writerow([f"p{i:05d}", x, y] if ids else [x, y])
    return c


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [r["name"] for r in rows], np.array([[float(r["x"]), float(r["y"])] for r in rows])


def render_args(coords: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        "render",
        "--input",
        str(coords),
        "--output",
        str(out),
        "--url",
        url,
        "--batch-size",
        "8",
        *extra,
    ]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordconv", "client", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_2000_coordinates_render_to_pngs_and_locate_back(server, tmp_path) -> None:
    c = write_coords(tmp_path / "coords.csv", 2000)
    out = tmp_path / "pngs"
    s = asyncio.run(
        run("render", read_coords(tmp_path / "coords.csv"), out, url=server.url, quiet=True)
    )
    assert s.ok and s.succeeded == 2000 and s.output_written
    assert len(list(out.glob("*.png"))) == 2000
    s = asyncio.run(
        run("locate", read_images(out), tmp_path / "xy.csv", url=server.url, quiet=True)
    )
    assert s.ok
    names, xy = read_csv(tmp_path / "xy.csv")
    assert names == sorted(f"p{i:05d}" for i in range(2000))
    truth = c[np.argsort([f"p{i:05d}" for i in range(2000)])]
    assert metrics.mean_error_px(xy, truth) <= 0.5


def test_python_api_sync(server) -> None:
    with CoordConvClient(server.url) as c:
        images = c.render([[10, 20], [30, 40]])
        assert images.shape == (2, 64, 64) and images.dtype == np.float32
        xy = c.locate(images)
        np.testing.assert_allclose(xy, [[10, 20], [30, 40]], atol=0.5)
        assert {m["name"] for m in c.models()} >= {"render", "locate"}
        with pytest.raises(ClientError, match="HTTP 400: coords\\[0\\]"):
            c.render([[99, 1]])


def journal_items(stage: Path) -> int:
    j = stage / "journal.jsonl"
    if not j.exists():
        return 0
    return sum(json.loads(line)["items"] for line in j.read_text().splitlines() if line.strip())


@pytest.mark.parametrize("output", ["out.npy", "pngs"])
def test_a_killed_render_resumes_with_every_item_exactly_once(slow_server, tmp_path, output):
    server = slow_server
    c = write_coords(tmp_path / "coords.csv", 1200, seed=3)
    out = tmp_path / output
    args = render_args(tmp_path / "coords.csv", out, server.url, "--concurrency", "1", "--quiet")
    proc = cli(*args)
    if output == "out.npy":
        wait_for(lambda: journal_items(tmp_path / "out.npy.parts") >= 80, timeout=60)
    else:
        wait_for(lambda: out.exists() and len(list(out.glob("*.png"))) >= 80, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.npy").exists()  # never a half-written single file
    if output == "out.npy":
        assert journal_items(tmp_path / "out.npy.parts") < 1200  # really killed midway
    else:
        assert len(list(out.glob("*.png"))) < 1200
    code, err = run_cli(*args)  # the same job again without --resume: refused, nothing lost
    assert code == 2 and "holds an unfinished run of this job; --resume continues it" in err
    done = proc2 = cli(*args, "--resume")
    _, err = proc2.communicate(timeout=300)
    assert done.returncode == 0, err
    assert "skipped (already done)" in err and " 0 skipped" not in err
    if output == "out.npy":
        images = np.load(out)
        assert images.shape == (1200, 64, 64)
        assert not (tmp_path / "out.npy.parts").exists()
    else:
        files = sorted(out.glob("*.png"))
        assert [f.stem for f in files] == [f"p{i:05d}" for i in range(1200)]
        assert not list(out.glob(".*tmp*"))
        images = np.stack([np.asarray(Image.open(f), np.float32) / 255 for f in files])
    assert metrics.iou(images, data.squares(c)).min() >= 0.9


def test_a_killed_locate_to_csv_resumes(slow_server, tmp_path) -> None:
    server = slow_server
    c = data.centres()[::2][:1000]
    np.save(tmp_path / "images.npy", data.squares(c))
    args = [
        "locate",
        "--input",
        str(tmp_path / "images.npy"),
        "--output",
        str(tmp_path / "xy.csv"),
        "--url",
        server.url,
        "--batch-size",
        "4",
        "--concurrency",
        "1",
        "--quiet",
    ]
    proc = cli(*args)
    wait_for(lambda: journal_items(tmp_path / "xy.csv.parts") >= 40, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "xy.csv").exists()
    assert journal_items(tmp_path / "xy.csv.parts") < 1000
    proc = cli(*args, "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    names, xy = read_csv(tmp_path / "xy.csv")
    assert names == [str(i) for i in range(1000)]
    assert metrics.mean_error_px(xy, c) <= 0.5


def test_a_server_restart_midway_completes_with_resume(tmp_path) -> None:
    """The server goes away mid-job: the batches in flight retry for the window, the rest make
    one attempt each (the outage is one clock for the job, not a window per batch), every
    item left is listed as failed, and --resume completes the output."""
    c = write_coords(tmp_path / "coords.csv", 1500, seed=5)
    port = free_port()

    def serve() -> LiveServer:
        return LiveServer(("render",), max_queue_delay_us=20_000, port=port).__enter__()

    live = serve()
    out = tmp_path / "out.npy"
    args = render_args(
        tmp_path / "coords.csv",
        out,
        live.url,
        "--concurrency",
        "2",
        "--retries",
        "2",
        "--retry-window",
        "1",
        "--quiet",
    )
    proc = cli(*args)
    wait_for(lambda: journal_items(tmp_path / "out.npy.parts") >= 100, timeout=60)
    live.__exit__()  # the server goes away under the client
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "failed" in err and not out.exists()
    failed = rows_of(tmp_path / "out.npy.failed.csv")
    assert len(failed) >= 200 and all(row["reason"] for row in failed)
    retried = re.search(r"(\d+) retries", err)
    # The two batches in flight retry (twice, and on while the 1 s window lasts); each later
    # batch makes one attempt. A window per batch would retry all 8-item batches at least twice.
    assert retried is not None and int(retried[1]) < len(failed) / 8, err
    live = serve()
    try:
        proc = cli(*args, "--resume")
        _, err = proc.communicate(timeout=300)
    finally:
        live.__exit__()
    assert proc.returncode == 0, err
    images = np.load(out)
    assert images.shape == (1500, 64, 64)
    assert metrics.iou(images, data.squares(c)).min() >= 0.9
    assert not (tmp_path / "out.npy.failed.csv").exists()


class Flaky:
    """An ASGI app that answers 503 with Retry-After to the first `failures` requests."""

    def __init__(self, failures: int, retry_after: str = "0.2") -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.times: list[float] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.times.append(time.monotonic())
        if len(self.times) <= self.failures:
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"retry-after", self.retry_after.encode()),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"detail": "busy"}'})
            return
        import io

        buf = io.BytesIO()
        np.save(buf, np.zeros((1, 64, 64), np.float32))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-npy")],
            }
        )
        await send({"type": "http.response.body", "body": buf.getvalue()})


def run_flaky(app: Flaky):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    wait_for(lambda: srv.started, 10)
    return srv, t, srv.servers[0].sockets[0].getsockname()[1]


def test_503_is_retried_after_retry_after() -> None:
    app = Flaky(failures=2, retry_after="0.3")
    srv, t, port = run_flaky(app)
    try:
        with CoordConvClient(f"http://127.0.0.1:{port}", retries=3) as c:
            retries: list[str] = []
            c.on_retry = lambda attempt, reason: retries.append(reason)
            assert c.render([[1, 1]]).shape == (1, 64, 64)
    finally:
        srv.should_exit = True
        t.join()
    assert len(app.times) == 3 and len(retries) == 2
    assert "HTTP 503" in retries[0]
    gaps = np.diff(app.times)
    assert (gaps >= 0.28).all()  # honoured Retry-After


def test_retries_give_up_and_4xx_is_not_retried() -> None:
    app = Flaky(failures=10, retry_after="0")
    srv, t, port = run_flaky(app)
    try:
        with (
            CoordConvClient(f"http://127.0.0.1:{port}", retries=2, retry_window=0) as c,
            pytest.raises(ClientError, match="gave up after 3 attempts"),
        ):
            c.render([[1, 1]])
    finally:
        srv.should_exit = True
        t.join()
    assert len(app.times) == 3


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    assert backoff(1, "2") == 2.0
    waits = [backoff(5, None) for _ in range(200)]
    assert 0 <= min(waits) and max(waits) <= 6.4 and len(set(waits)) > 100


def test_4xx_answers_are_reported_per_item_and_not_assembled(server, tmp_path) -> None:
    write_coords(tmp_path / "coords.csv", 10)
    s = asyncio.run(
        run(
            "render",
            read_coords(tmp_path / "coords.csv"),
            tmp_path / "o.npy",
            url=server.url,
            model="locate",
            batch_size=4,
            quiet=True,
        )
    )
    assert len(s.failures) == 10 and s.retries == 0
    assert "does 'locate'" in s.failures[0][1]
    assert not (tmp_path / "o.npy").exists()
    rows = rows_of(tmp_path / "o.npy.failed.csv")
    assert len(rows) == 10 and all("does 'locate'" in r["reason"] for r in rows)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("x,y\n1,2\n3,abc\n", "c.csv", "c.csv:3: y must be a number, got 'abc'"),
        ("a,b\n1,2\n", "c.csv", "c.csv:1: the header must name columns x and y"),
        ("x,y\n1,2\n70,2\n", "c.csv", "c.csv:3: x = '70' is not in [0, 63]"),
        ('{"x": 1, "y": 2}\n{"x": 1\n', "c.jsonl", "c.jsonl:2: not valid JSON"),
        (
            '{"x": 1, "y": 2, "id": "a"}\n{"x": 3, "y": 4, "id": "a"}\n',
            "c.jsonl",
            "duplicate id 'a'",
        ),
        ("x,y\n", "c.csv", "c.csv: no items"),
        ("1,2", "c.txt", "expected a .csv or .jsonl file"),
    ],
)
def test_bad_coordinate_files_exit_2_naming_file_and_line(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    proc = cli("render", "--input", str(tmp_path / name), "--output", str(tmp_path / "o"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert message in err and "Traceback" not in err


def test_bad_image_inputs_exit_2(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "imgs" / "small.png")
    proc = cli("locate", "--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "o.csv"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "small.png: image is 32x32, expected 64x64" in err
    proc = cli("locate", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o.csv"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no such file or directory" in err
    np.save(tmp_path / "bad.npy", np.zeros((2, 10, 10), np.float32))
    proc = cli("locate", "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "o.csv"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "expected float (N, 64, 64)" in err


def test_progress_is_plain_lines_off_a_terminal_with_one_final_summary(server, tmp_path) -> None:
    write_coords(tmp_path / "coords.csv", 300)
    proc = cli(
        "render",
        "--input",
        str(tmp_path / "coords.csv"),
        "--output",
        str(tmp_path / "o.npy"),
        "--url",
        server.url,
        "--batch-size",
        "16",
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    # Periodic lines (every 2 s) look like "render: 150/300 items (50%), ... ETA ..., 0 failed";
    # the run ends with exactly one summary line, never a second copy of the final state.
    assert all(
        line.startswith("render: ") and "items/s, ETA" in line and "failed" in line
        for line in lines[:-1]
    ), err
    assert not any(line.startswith("render: 300/300") for line in lines), err
    assert lines[-1].startswith(
        "render: 300 done, 0 skipped (already done), 0 failed of 300 items in "
    ), err
    assert lines[-1].endswith(f"retries); wrote {tmp_path / 'o.npy'}"), err
    assert sum("300 done" in line for line in lines) == 1
    assert "\r" not in err  # no progress bar escape codes in a log file


# Integrity: a resume never mixes jobs; refusals stop at once; bad outputs and ids are one line.


def run_cli(*args: str) -> tuple[int, str]:
    proc = cli(*args)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("output", ["out.npy", "pngs"])
def test_resume_after_the_input_changed_is_refused(server, tmp_path, output) -> None:
    coords = tmp_path / "coords.csv"
    write_coords(coords, 40, seed=1)
    out = tmp_path / output
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet"))
    assert code == 0, err
    if output == "out.npy":  # an interrupted job: staged parts, no assembled file yet
        shutil.rmtree(tmp_path / "out.npy.parts", ignore_errors=True)
        out.unlink()
        proc = cli(*render_args(coords, out, server.url, "--quiet", "--concurrency", "1"))
        wait_for(lambda: journal_items(tmp_path / "out.npy.parts") >= 8, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    write_coords(coords, 30, seed=2)  # same ids, other coordinates, fewer rows
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet"))
    state = "unfinished" if output == "out.npy" else "finished"
    assert code == 2 and f"holds the {state} output of another job (other input)" in err
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet", "--resume"))
    assert code == 2, err
    assert "cannot resume: the input or the options changed" in err
    assert "--overwrite starts over (it replaces that output)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Another model is another job too.
    write_coords(coords, 40, seed=1)
    if output == "pngs":
        code, err = run_cli(
            *render_args(coords, out, server.url, "--quiet", "--resume", "--model", "pixel")
        )
        assert code == 2 and "(model)" in err


def test_a_refused_job_stops_at_once_without_splitting(tmp_path) -> None:
    coords = tmp_path / "coords.csv"
    write_coords(coords, 200, seed=3)
    with LiveServer(("render",), api_key="right") as live:
        code, err = run_cli(
            *render_args(coords, tmp_path / "o.npy", live.url, "--quiet", "--api-key", "wrong")
        )
        text = httpx.get(live.url + "/metrics", verify=TLS).text
    assert code == 2 and "the service refused the job (HTTP 401: invalid API key)" in err
    sent = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("coordconv_requests_total") and 'status="401"' in line
    )
    assert 1 <= sent <= 4  # the requests already in flight (4), never a split into 200
    # A refused job changes nothing on disk: no output, no staged parts, no record, no list.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coords.csv"]


def test_unknown_model_stops_with_one_message(server, tmp_path) -> None:
    coords = tmp_path / "coords.csv"
    write_coords(coords, 100, seed=4)
    code, err = run_cli(*render_args(coords, tmp_path / "o", server.url, "--model", "nope"))
    assert code == 2 and "HTTP 404: unknown model 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("proc", "cannot write there"),
        ("long-id", "bytes; at most 200"),
        ("nul-id", "cannot name a file"),
        ("timeout-0", "must be a number of seconds > 0"),
        ("retries-negative", "must be >= 0"),
    ],
)
def test_bad_outputs_ids_and_options_are_one_line_and_exit_2(server, tmp_path, case, message):
    coords = tmp_path / "coords.csv"
    write_coords(coords, 3)
    out, extra = tmp_path / "o.npy", []
    if case == "proc":
        out = Path("/proc/coordconv-out.npy")
    elif case == "long-id":
        coords.write_text("id,x,y\n" + "a" * 300 + ",10,10\n")
    elif case == "nul-id":
        coords.write_text("id,x,y\na\x00b,10,10\n")
    elif case == "timeout-0":
        extra = ["--timeout", "0"]
    else:
        extra = ["--retries", "-1"]
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet", *extra))
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_a_csv_saved_with_a_byte_order_mark_is_read(tmp_path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid,x,y\nfirst,10,20\n".encode())
    items = read_coords(path)
    assert list(items.iter_names()) == ["first"]
    (batch,) = items.batches(64)
    assert batch.names == ["first"] and batch.payload.tolist() == [[10.0, 20.0]]


def test_503_is_honoured_for_the_retry_window_past_the_retry_count() -> None:
    app = Flaky(failures=6, retry_after="0.2")
    srv, t, port = run_flaky(app)
    try:
        with CoordConvClient(f"http://127.0.0.1:{port}", retries=1, retry_window=30) as c:
            assert c.render([[1, 1]]).shape == (1, 64, 64)
    finally:
        srv.should_exit = True
        t.join()
    assert len(app.times) == 7  # six refusals waited out, far past retries=1
