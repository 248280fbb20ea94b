"""The batch client owns what it writes (client/outputs.py), against a real service: it never
writes over a file or into a folder it did not create for this job unless told (--overwrite),
one job per output (the record outlives completion), --resume of the same finished job is a
no-op, a killed run's temporary files are removed on resume and on --overwrite, and the disk is
checked before a large .npy. Every test looks at the files on disk afterwards."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import cli as client_cli
from tests.helpers import free_port, wait_for
from tests.service.test_client import (
    cli,
    journal_items,
    render_args,
    run_cli,
    write_coords,
)
from training import data, metrics

NOWHERE = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail (exit 2)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32) / 255


def tree(root: Path) -> list[str]:
    """Every file and folder under `root`, relative, hidden ones included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def temporaries(root: Path) -> list[str]:
    return [p for p in tree(root) if ".tmp-" in p]


def listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def kill_when(
    proc: subprocess.Popen[str], predicate: Callable[[], bool], limit: float = 60
) -> None:
    """SIGKILL `proc` the moment `predicate` holds (polled without sleeping), or when it ends."""
    deadline = time.monotonic() + limit
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def coords_file(path: Path, rows: list[tuple[str, float, float]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "x", "y"])
        w.writerows(rows)
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def locate_args(images: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["locate", "--input", str(images), "--output", str(out), "--url", url, *extra]


# -- never over a file or into a folder it did not write ----------------------------------------


@pytest.mark.parametrize("task", ["render", "locate"])
def test_a_file_the_client_did_not_write_is_refused_and_overwrite_replaces_it(
    server, tmp_path, task
) -> None:
    if task == "render":
        write_coords(tmp_path / "coords.csv", 20, seed=7)
        out = tmp_path / "existing.npy"
        args = render_args(tmp_path / "coords.csv", out, server.url, "--quiet")
    else:
        np.save(tmp_path / "images.npy", data.squares(data.centres()[:20]))
        out = tmp_path / "out.csv"
        args = locate_args(tmp_path / "images.npy", out, server.url, "--quiet")
    out.write_bytes(b"a user's own file\n")
    before = tree(tmp_path)
    for extra in ([], ["--resume"]):
        code, err = run_cli(*args, *extra)
        assert code == 2
        line = one_line(err)
        assert f"coordconv client: {out}: " in line and "--overwrite replaces it" in line
        assert ("cannot resume" in line) == bool(extra)
        assert out.read_bytes() == b"a user's own file\n"  # untouched
        assert tree(tmp_path) == before  # nothing created beside it
    code, err = run_cli(*args, "--overwrite")
    assert code == 0, err
    if task == "render":
        assert np.load(out).shape == (20, 64, 64)
    else:
        assert out.read_text().startswith("name,x,y,confidence,ok\n")
        assert len(out.read_text().splitlines()) == 21
    # Replaced wholly: the output and its job record, nothing else left beside it.
    assert tree(tmp_path) == sorted([*before, f".{out.name}.coordconv-job.json"])
    record = json.loads((tmp_path / f".{out.name}.coordconv-job.json").read_text())
    assert record["state"] == "complete" and record["job"]["task"] == task


def test_a_png_folder_it_did_not_write_is_refused_and_overwrite_leaves_only_this_job(
    server, tmp_path
) -> None:
    out = tmp_path / "pngs"
    out.mkdir()
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(out / "a.png")  # the user's a.png
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(out / "old.png")
    coords = coords_file(tmp_path / "coords.csv", [("a", 10, 10), ("b", 30, 40)])
    before = {p: (out / p).read_bytes() for p in ("a.png", "old.png")}
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet"))
    assert code == 2
    assert "holds 2 PNG files, not written by this client (no job record)" in one_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet", "--overwrite"))
    assert code == 0, err
    assert tree(out) == [".coordconv-job.json", "a.png", "b.png"]  # old.png went too
    np.testing.assert_array_equal(png(out / "a.png"), data.squares([[10, 10]])[0])


def test_two_jobs_into_one_png_folder_never_mix(server, tmp_path) -> None:
    out = tmp_path / "pngs"
    job_a = coords_file(tmp_path / "a.csv", [("a", 10, 10), ("b", 20, 20)])
    job_b = coords_file(tmp_path / "b.csv", [("a", 40, 40), ("c", 50, 50)])
    code, err = run_cli(*render_args(job_a, out, server.url, "--quiet"))
    assert code == 0, err
    finished_a = {p: (out / p).read_bytes() for p in ("a.png", "b.png")}
    code, err = run_cli(*render_args(job_b, out, server.url, "--quiet"))
    assert code == 2
    assert "holds the finished output of another job (other input)" in one_line(err)
    code, err = run_cli(*render_args(job_b, out, server.url, "--quiet", "--resume"))
    assert code == 2
    assert "cannot resume: the input or the options changed since (input)" in one_line(err)
    assert {p: (out / p).read_bytes() for p in ("a.png", "b.png")} == finished_a
    assert tree(out) == [".coordconv-job.json", "a.png", "b.png"]
    code, err = run_cli(*render_args(job_b, out, server.url, "--quiet", "--overwrite"))
    assert code == 0, err
    assert tree(out) == [".coordconv-job.json", "a.png", "c.png"]  # no b.png of job A
    np.testing.assert_array_equal(png(out / "a.png"), data.squares([[40, 40]])[0])
    assert not list(tmp_path.glob("*.failed.csv"))


def test_overwrite_never_deletes_files_that_are_not_pngs(server, tmp_path) -> None:
    out = tmp_path / "pngs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(out / "x.png")
    (out / "sub").mkdir()
    coords = coords_file(tmp_path / "coords.csv", [("a", 10, 10)])
    before = tree(out)
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet", "--overwrite"))
    assert code == 2
    line = one_line(err)
    assert "holds entries that are not PNG files ('notes.txt', 'sub')" in line
    assert "never deletes other files" in line
    assert tree(out) == before and (out / "notes.txt").read_text() == "mine"


def test_an_empty_folder_is_written_into(server, tmp_path) -> None:
    out = tmp_path / "pngs"
    out.mkdir()  # e.g. a mount point
    coords = coords_file(tmp_path / "coords.csv", [("a", 10, 10)])
    code, err = run_cli(*render_args(coords, out, server.url, "--quiet"))
    assert code == 0, err
    assert tree(out) == [".coordconv-job.json", "a.png"]


# -- one job per output; the record outlives completion -----------------------------------------


@pytest.mark.parametrize("task", ["render", "locate"])
def test_a_finished_single_file_output_belongs_to_its_job(server, tmp_path, task) -> None:
    if task == "render":
        write_coords(tmp_path / "a.csv", 30, seed=1)
        write_coords(tmp_path / "b.csv", 30, seed=2)
        out = tmp_path / "out.npy"

        def args(job: str, url: str, *extra: str) -> list[str]:
            return render_args(tmp_path / f"{job}.csv", out, url, "--quiet", *extra)

    else:
        np.save(tmp_path / "a.npy", data.squares(data.centres()[:30]))
        np.save(tmp_path / "b.npy", data.squares(data.centres()[30:60]))
        out = tmp_path / "out.csv"

        def args(job: str, url: str, *extra: str) -> list[str]:
            return locate_args(tmp_path / f"{job}.npy", out, url, "--quiet", *extra)

    code, err = run_cli(*args("a", server.url))
    assert code == 0, err
    record = tmp_path / f".{out.name}.coordconv-job.json"
    assert json.loads(record.read_text())["state"] == "complete"
    assert not (tmp_path / f"{out.name}.parts").exists()
    finished, stamp = out.read_bytes(), out.stat().st_mtime_ns
    everything = tree(tmp_path)
    # Another job over the finished output: refused, with and without --resume.
    code, err = run_cli(*args("b", server.url, "--resume"))
    assert code == 2 and "cannot resume: the input or the options changed" in one_line(err)
    code, err = run_cli(*args("b", server.url))
    assert code == 2 and "holds the finished output of another job" in one_line(err)
    # The same job without a flag: refused, saying what --resume and --overwrite would do.
    code, err = run_cli(*args("a", server.url))
    assert code == 2 and "already holds the finished output of this job" in one_line(err)
    # The same job with --resume: nothing to do, nothing sent (nothing listens at NOWHERE).
    code, err = run_cli(*args("a", NOWHERE, "--resume"))
    assert code == 0, err
    assert one_line(err).endswith(f"{out} is this job's finished output, nothing was sent")
    assert " 0 done, 30 skipped (already done), 0 failed" in err
    assert out.read_bytes() == finished and out.stat().st_mtime_ns == stamp
    assert tree(tmp_path) == everything


def test_a_finished_output_changed_since_is_not_resumed(server, tmp_path) -> None:
    write_coords(tmp_path / "coords.csv", 10, seed=3)
    out = tmp_path / "out.npy"
    code, err = run_cli(*render_args(tmp_path / "coords.csv", out, server.url, "--quiet"))
    assert code == 0, err
    np.save(out, np.zeros((10, 64, 64), np.float32))  # someone else's content now
    code, err = run_cli(*render_args(tmp_path / "coords.csv", out, NOWHERE, "--quiet", "--resume"))
    assert code == 2 and "changed since this job wrote it; --overwrite" in one_line(err)
    assert not np.load(out).any()


# -- killed runs: exact results, and no temporary file left behind --------------------------------


def test_a_png_render_killed_mid_run_leaves_no_temporary_files_after_resume(
    slow_server, tmp_path
) -> None:
    c = write_coords(tmp_path / "coords.csv", 1500, seed=11)
    out = tmp_path / "pngs"
    args = render_args(tmp_path / "coords.csv", out, slow_server.url, "--concurrency", "2")
    caught: list[str] = []
    for attempt in range(20):  # a kill between two PNG writes leaves no temporary file: retry
        proc = cli(*args, "--quiet", *(["--resume"] if attempt else []))
        kill_when(proc, lambda: any(".png.tmp-" in name for name in listing(out)))
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
        caught = temporaries(tmp_path)
        if caught:
            break
    assert any(re.fullmatch(r"pngs/\.p\d{5}\.png\.tmp-\d+", name) for name in caught), caught
    assert len(list(out.glob("*.png"))) < 1500  # really killed midway
    code, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert not temporaries(tmp_path)
    files = sorted(out.glob("*.png"))
    assert [f.stem for f in files] == [f"p{i:05d}" for i in range(1500)]
    assert tree(out) == sorted([".coordconv-job.json", *(f.name for f in files)])
    images = np.stack([png(f) for f in files])
    assert metrics.iou(images, data.squares(c)).min() >= 0.9


@pytest.mark.parametrize("restart", ["--resume", "--overwrite"])
def test_a_npy_render_killed_while_assembling_is_cleaned_up(server, tmp_path, restart) -> None:
    c = write_coords(tmp_path / "coords.csv", 3000, seed=12)
    out = tmp_path / "out.npy"
    args = render_args(tmp_path / "coords.csv", out, server.url, "--quiet", "--batch-size", "64")
    proc = cli(*args)
    assembling = tmp_path / f".out.npy.tmp-{proc.pid}"
    kill_when(proc, assembling.exists, limit=120)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert assembling.exists() and not out.exists()  # a 49 MB temporary, left by the kill
    assert journal_items(tmp_path / "out.npy.parts") == 3000
    code, err = run_cli(*args, restart)
    assert code == 0, err
    assert not temporaries(tmp_path)
    assert tree(tmp_path) == [".out.npy.coordconv-job.json", "coords.csv", "out.npy"]
    images = np.load(out)
    assert images.shape == (3000, 64, 64)
    assert metrics.iou(images, data.squares(c)).min() >= 0.9
    if restart == "--resume":
        assert " 0 done, 3000 skipped (already done)" in err  # nothing sent again


def test_a_second_client_on_the_same_output_is_refused_while_one_writes(
    slow_server, tmp_path
) -> None:
    write_coords(tmp_path / "coords.csv", 1500, seed=13)
    out = tmp_path / "out.npy"
    args = render_args(
        tmp_path / "coords.csv", out, slow_server.url, "--quiet", "--concurrency", "1"
    )
    first = cli(*args)
    try:
        wait_for(lambda: journal_items(tmp_path / "out.npy.parts") >= 16, timeout=60)
        code, err = run_cli(*args, "--resume")
        assert code == 2 and "in use by another coordconv client right now" in one_line(err)
        assert first.poll() is None  # the first one is still writing, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    code, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert np.load(out).shape == (1500, 64, 64)


# -- free disk space ------------------------------------------------------------------------------


def test_a_npy_that_does_not_fit_on_the_disk_is_refused_before_any_request(
    tmp_path, monkeypatch, capsys
) -> None:
    write_coords(tmp_path / "coords.csv", 1000, seed=4)
    out = tmp_path / "big" / "out.npy"
    real = shutil.disk_usage

    def small_disk(path: str | os.PathLike[str]) -> object:
        total, used, _ = real(path)
        return type(real(path))(total, used, 20_000_000)  # 20 MB free; 1000 images need 33 MB

    monkeypatch.setattr("client.outputs.shutil.disk_usage", small_disk)
    code = client_cli.main(render_args(tmp_path / "coords.csv", out, NOWHERE, "--quiet"))
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(
        rf"coordconv client: {re.escape(str(out))}: needs 3[0-9.]+ MB of free disk \(the staged "
        rf"parts, then the 16.4 MB array\) but {re.escape(str(tmp_path))} has 20.0 MB free; "
        "free some space or choose another output",
        line,
    ), line
    assert tree(tmp_path) == ["coords.csv"]  # nothing created: no folder, parts or record


def test_a_npy_larger_than_a_real_file_system_is_refused_at_once(tmp_path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("needs a writable /dev/shm")
    free = shutil.disk_usage(shm).free
    rows = free // (2 * 64 * 64 * 4) + 1000  # the parts, then the array: twice the images
    if rows > 1_500_000:
        pytest.skip(f"/dev/shm has {free / 1e9:.0f} GB free: too large to fill in a test")
    with open(tmp_path / "coords.csv", "w") as f:
        f.write("x,y\n")
        f.writelines(f"{i % 56 + 4},{i // 56 % 56 + 4}\n" for i in range(rows))
    out = shm / f"coordconv-test-{os.getpid()}" / "out.npy"
    started = time.monotonic()
    try:
        code, err = run_cli(*render_args(tmp_path / "coords.csv", out, NOWHERE, "--quiet"))
        assert code == 2
        assert "of free disk" in one_line(err) and "cannot reach" not in err
        assert not out.parent.exists()
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    assert time.monotonic() - started < 60
