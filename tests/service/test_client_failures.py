"""The batch client when things go wrong, against a real service: an address never reached fails
at once (exit 2, one line; retries are for a service that answered before), a URL without a
scheme is refused, and --min-confidence marks, counts and lists the items below it while still
writing every output (exit 1)."""

from __future__ import annotations

import csv
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from client import CoordConvClient
from client.api import ClientError, Unreachable
from tests.helpers import LiveServer, free_port
from tests.service.test_client import cli, render_args, rows_of, run_cli, write_coords
from tests.service.test_client_outputs import locate_args, one_line, tree
from training import data

# -- an address that was never reached ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # A port free when the test runs (chosen then, so every pytest worker collects one id).
        ("refused", "(connection refused)"),
        ("http://no-such-host.invalid:8000", "cannot reach the service at http://no-such-host"),
    ],
)
@pytest.mark.parametrize("output", ["out.npy", "pngs"])
def test_an_address_never_reached_fails_at_once_with_one_line(tmp_path, url, reason, output):
    if url == "refused":
        url = f"http://127.0.0.1:{free_port()}"
    write_coords(tmp_path / "coords.csv", 300)
    started = time.monotonic()
    code, err = run_cli(*render_args(tmp_path / "coords.csv", tmp_path / output, url))
    assert time.monotonic() - started < 20  # not the 120 s retry window
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"coordconv client: cannot reach the service at {url} (")
    assert reason in line and "nothing was sent" in line
    assert "is --url (env COORDCONV_URL) right?" in line
    assert tree(tmp_path) == ["coords.csv"]  # nothing created: rerunning needs no flag


@pytest.fixture
def silent_address():
    """An address that accepts connections and never answers (a hung process, a black hole)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("output", ["out.npy", "pngs", "out.csv"])
def test_a_service_that_never_answers_fails_fast_and_leaves_the_output_as_it_was(
    tmp_path, silent_address, output
):
    write_coords(tmp_path / "coords.csv", 300)
    task = "locate" if output.endswith(".csv") else "render"
    if task == "locate":
        np.save(tmp_path / "images.npy", np.zeros((5, 64, 64), np.float32))
        args = locate_args(tmp_path / "images.npy", tmp_path / output, silent_address)
    else:
        args = render_args(tmp_path / "coords.csv", tmp_path / output, silent_address)
    before = tree(tmp_path)
    started = time.monotonic()
    code, err = run_cli(*args, "--first-contact-timeout", "1.5")
    took = time.monotonic() - started
    assert code == 2 and took < 15, (code, took)  # not the 120 s retry window
    line = one_line(err)
    assert line.startswith(f"coordconv client: cannot reach the service at {silent_address} (")
    assert "connected, but no answer within 1.5 s" in line and "nothing was sent" in line
    assert tree(tmp_path) == before  # no .failed.csv, no .parts/, no job record


def test_the_first_contact_timeout_is_a_documented_flag(tmp_path) -> None:
    proc = cli("render", "--help")
    out, _ = proc.communicate(timeout=60)
    text = " ".join(out.split())
    assert "--first-contact-timeout" in text and "default 10" in text
    code, err = run_cli(
        *render_args(tmp_path / "c.csv", tmp_path / "o.npy", "http://127.0.0.1:1"),
        "--first-contact-timeout",
        "0",
    )
    assert code == 2 and "must be a number of seconds > 0, got 0" in one_line(err)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB file system: room for the job's record and a few parts, not for the output."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("pngs", "No space left on device"),  # the disk fills up as the PNGs are written
        ("out.npy", "of free disk"),  # known before the first request: the array's size
    ],
)
def test_a_full_disk_is_one_line_naming_the_path(server, tmp_path, tiny_disk, output, says):
    write_coords(tmp_path / "coords.csv", 400)
    out = tiny_disk / output
    code, err = run_cli(*render_args(tmp_path / "coords.csv", out, server.url, "--quiet"))
    assert code == 2, err
    line = one_line(err)
    assert line.startswith(f"coordconv client: {out}") and says in line, line


def test_a_url_without_scheme_is_refused_before_anything_is_read(tmp_path) -> None:
    write_coords(tmp_path / "coords.csv", 5)
    for args, env in (
        (["--url", "127.0.0.1:18080"], None),
        ([], {"COORDCONV_URL": "127.0.0.1:18080"}),
    ):
        proc = cli(
            "render",
            "--input",
            str(tmp_path / "coords.csv"),
            "--output",
            str(tmp_path / "o.npy"),
            *args,
            env=env,
        )
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert one_line(err) == (
            "coordconv client: --url '127.0.0.1:18080' has no scheme; write it as "
            "http://127.0.0.1:18080 (or https://)"
        )
        assert tree(tmp_path) == ["coords.csv"]
    proc = cli("render", "--help")
    out, _ = proc.communicate(timeout=60)
    assert "one without a scheme is refused, never guessed" in " ".join(out.split())


def test_python_api_unreachable_at_once_and_retries_once_answered(tmp_path) -> None:
    with pytest.raises(ValueError, match="has no scheme"):
        CoordConvClient("localhost:8000")
    started = time.monotonic()
    with (
        CoordConvClient(f"http://127.0.0.1:{free_port()}", retry_window=120) as c,
        pytest.raises(Unreachable, match="connection refused"),
    ):
        c.render([[1, 1]])
    assert time.monotonic() - started < 5
    # A service that answered once and went away is waited for (within the window), not
    # refused at once: the retries run and then give up.
    live = LiveServer(("render",)).__enter__()
    try:
        with CoordConvClient(live.url, retries=2, retry_window=0.5) as c:
            assert c.render([[10, 10]]).shape == (1, 64, 64)
            live.__exit__()
            retries: list[str] = []
            c.on_retry = lambda attempt, reason: retries.append(reason)
            with pytest.raises(ClientError, match="gave up after") as info:
                c.render([[10, 10]])
    finally:
        if live.thread.is_alive():
            live.__exit__()
    assert not isinstance(info.value, Unreachable) and len(retries) >= 2


# -- --min-confidence ------------------------------------------------------------------------------


def test_min_confidence_marks_counts_and_lists_but_still_writes_everything(
    server, tmp_path
) -> None:
    centres = data.centres()[::400][:6]
    images = np.concatenate([data.squares(centres), np.zeros((2, 64, 64), np.float32)])
    images = images[[0, 6, 1, 2, 3, 7, 4, 5]]  # blanks at items 1 and 5
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "xy.csv"
    args = locate_args(tmp_path / "images.npy", out, server.url, "--min-confidence", "0.5")
    code, err = run_cli(*args, "--quiet")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("locate: 8 done, 0 skipped (already done), 0 failed, 2 below ")
    assert lines[0].endswith(f"; wrote {out}")
    assert lines[1] == (
        "coordconv client: 2 below --min-confidence 0.5 (1, 5): written with "
        f"below_min_confidence=true in {out} and listed in {out}.failed.csv"
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [str(i) for i in range(8)]  # every item written
    assert [r["below_min_confidence"] for r in rows] == [
        "true" if i in (1, 5) else "false" for i in range(8)
    ]
    assert all(float(r["confidence"]) < 0.5 for r in rows if r["below_min_confidence"] == "true")
    located = np.array([[float(r["x"]), float(r["y"])] for r in rows])[[0, 2, 3, 4, 6, 7]]
    np.testing.assert_allclose(located, centres, atol=0.5)
    failed = rows_of(Path(f"{out}.failed.csv"))
    assert [r["name"] for r in failed] == ["1", "5"]
    assert all("below --min-confidence 0.5" in r["reason"] for r in failed)
    assert tree(tmp_path) == [
        ".xy.csv.coordconv-job.json",
        "images.npy",
        "xy.csv",
        "xy.csv.failed.csv",
    ]
    # --resume: the job is finished; the same verdict, nothing sent, nothing changed.
    finished = out.read_bytes()
    code, err = run_cli(
        *locate_args(
            tmp_path / "images.npy",
            out,
            f"http://127.0.0.1:{free_port()}",
            "--min-confidence",
            "0.5",
            "--resume",
        )
    )
    assert code == 1, err
    assert "0 done, 8 skipped (already done), 0 failed, 2 below --min-confidence 0.5" in err
    assert "nothing was sent" in err and out.read_bytes() == finished
    # Another threshold is another job.
    code, err = run_cli(*locate_args(tmp_path / "images.npy", out, server.url, "--resume"))
    assert code == 2 and "(min_confidence)" in one_line(err)


def test_bad_min_confidence_and_conflicting_flags_are_one_line(tmp_path) -> None:
    np.save(tmp_path / "images.npy", np.zeros((1, 64, 64), np.float32))
    for extra, message in (
        (["--min-confidence", "nan"], "must be a number in [0, 1], got nan"),
        (["--min-confidence", "1.5"], "must be a number in [0, 1], got 1.5"),
        (["--resume", "--overwrite"], "not allowed with argument --resume"),
        (["--batch-size", "1_0"], "expected a whole number, got '1_0'"),
    ):
        code, err = run_cli(*locate_args(tmp_path / "images.npy", tmp_path / "o.csv", "x", *extra))
        assert code == 2 and message in one_line(err), err
    assert tree(tmp_path) == ["images.npy"]
