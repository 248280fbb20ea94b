"""`coordconv reproduce` on a tiny budget: every seed in the table, the baseline search run once
and reused, time to goal, the 906-parameter row, plots."""

from __future__ import annotations

import json

import pytest

from training import reproduce, search
from training import train as training
from training.nets import Arch

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny(monkeypatch):
    """One epoch per run and a two-configuration search, so the whole pipeline runs in seconds."""
    monkeypatch.setitem(search.SPACE, "locate", {"lr": (0.003, 0.001), "shape": ((3, 1),)})
    monkeypatch.setitem(search.RUNGS, "locate", (1, 2))
    monkeypatch.setattr(search, "KEEP", 1)
    key = ("locate", "coordconv906")
    monkeypatch.setitem(training.DEFAULTS, key, {**training.DEFAULTS[key], "epochs": 1})


def test_reproduce_writes_every_seed_the_search_and_time_to_goal(tmp_path, tiny, capsys) -> None:
    out, runs = tmp_path / "results", tmp_path / "runs" / "reproduce"
    # The CoordConv locate rows are left out for speed: the 906-parameter regressor stands in.
    archs: tuple[Arch, ...] = ("coordconv906", "baseline")
    summary = reproduce.reproduce(
        out, runs, seeds=2, tasks=("locate",), archs=archs, splits=("quadrant",), progress=False
    )
    got = {(r["arch"], r["seed"]) for r in summary["runs"]}
    assert got == {("coordconv906", 0), ("coordconv906", 1), ("baseline", 0)}
    # The search: both learning rates at the first rung, the better one at the second.
    found = json.loads((out / "baseline_search.json").read_text())
    rungs = [(t["rung"], t["lr"]) for t in found["trials"]]
    assert sorted(rungs)[:2] == [(0, 0.001), (0, 0.003)] and len(rungs) == 3
    winner = search.best(found["trials"], "locate")
    assert winner["rung"] == 1 and winner["epochs"] == 2
    base = next(r for r in summary["runs"] if r["arch"] == "baseline")
    assert base["config"]["lr"] == winner["lr"] and base["epochs"] == 2
    table = (out / "reproduction.md").read_text()
    assert "| locate | quadrant | coordconv906 | 906 | 1 |" in table
    assert "| locate | quadrant | baseline | " in table
    assert "## Every seed" in table and "seed 1" in table
    assert "## Time to goal" in table and "Measured on: CPU" in table
    assert "# Baseline hyperparameter search" in (out / "baseline_search.md").read_text()
    for plot in ("learning_curves.png", "time_to_goal.png", "locate_error_map.png"):
        assert (out / plot).stat().st_size > 1000
    for r in summary["runs"]:
        assert r["to_best"]["seconds"] <= r["train_time_s"]

    # A second run reuses the cached search (no search at all) and the runs (--reuse).
    def no_search(*args, **kwargs):
        raise AssertionError("the cached search should have been reused")

    capsys.readouterr()
    again = reproduce.reproduce(
        out, runs, seeds=2, tasks=("locate",), archs=archs, splits=("quadrant",),
        progress=False, plots=False, reuse=True, search_fn=no_search,
    )  # fmt: skip
    assert "trained" not in capsys.readouterr().out
    assert [r["test"] for r in again["runs"]] == [r["test"] for r in summary["runs"]]
