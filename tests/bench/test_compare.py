"""benchmarks/compare.py: another commit's server beside this checkout's, in turns."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks import compare


def test_a_commit_is_measured_beside_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip("not a git checkout: nothing to compare with")
    head = found.stdout.strip()
    assert compare.main(["--before", head, "--rounds", "1", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "(b) round 1 before" in out and "(b) round 1 after" in out
    summary = out.strip().splitlines()[-1]
    assert "render, 1 item(s)/request, 32 clients" in summary and f"before = {head}" in summary
    worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True)
    assert "coordconv-compare-" not in worktrees.stdout  # cleaned up


def test_an_unknown_commit_is_one_line() -> None:
    with pytest.raises(SystemExit, match="cannot check out 'no-such-ref'"):
        compare.main(["--before", "no-such-ref"])
