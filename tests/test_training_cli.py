"""`coordconv train|export|reproduce`: bad input exits non-zero with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordconv", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--task", "segment"], "invalid choice: 'segment'"),
        (["train", "--task", "pixel", "--epochs", "-3"], "must be >= 0"),
        (["train", "--task", "pixel", "--lr", "nan"], "must be a positive number"),
        (["train", "--task", "pixel", "--out", "/proc/nope/run"], "cannot create output folder"),
        (["export", "/nonexistent/run", "--name", "x"], "not a run folder"),
        (["reproduce", "--seeds", "0"], "must be >= 1"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_cli_input_exits_nonzero_with_a_message(args, message) -> None:
    proc = run(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_the_subcommands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for name in ("train", "reproduce", "export", "serve", "client"):
        assert name in proc.stdout
