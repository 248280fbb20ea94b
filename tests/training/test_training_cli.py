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
        (["reproduce", "--workers", "0"], "must be >= 1"),
        (["reproduce", "--blocks", "everything"], "invalid choice: 'everything'"),
        (["train", "--task", "pixel", "--recipe", "tuned"], "invalid choice: 'tuned'"),
        (["train", "--task", "pixel", "--without", "magic"], "invalid choice: 'magic'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["reproduce", "--rerun", "paper/pixel-coordconv-diagonal-s3"], "is not a planned run"),
    ],
)
def test_bad_cli_input_exits_nonzero_with_a_message(args, message, capsys) -> None:
    """In this process (`coordconv.cli.main`, what the entry point calls): an exception that
    escaped would fail the test as a traceback would; the entry point itself runs in the tests
    below."""
    from coordconv.cli import main

    code: int | str | None
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("message"): the interpreter prints it, exit status 1
        err, code = err + code, 1
    assert code not in (0, None)
    assert message in err


def test_train_keeps_an_unfinished_runs_checkpoint_and_refuses_a_torn_one(tmp_path, capsys):
    from coordconv.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"torn mid-write")
    args = ["train", "--task", "locate", "--arch", "coordconv906", "--out", str(run)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"coordconv: error: {run} holds an unfinished run (checkpoint.pt): resume it (--resume), "
        "or remove it to start over"
    )
    assert main([*args, "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"coordconv: error: {run / 'checkpoint.pt'}: not a readable checkpoint (")
    assert err.endswith("); remove it to start over")
    assert (run / "checkpoint.pt").read_bytes() == b"torn mid-write"  # nothing trained over it
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_help_lists_the_subcommands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for name in ("train", "reproduce", "export", "serve", "client"):
        assert name in proc.stdout


def test_the_clis_names_are_the_recipes() -> None:
    from experiments import campaign, cli, recipe

    assert cli.CHANGES == tuple(recipe.CHANGES)
    assert cli.RECIPES == recipe.RECIPES
    assert cli.BLOCKS == campaign.BLOCKS


def test_train_turns_one_change_off(tmp_path) -> None:
    import json

    out = tmp_path / "run"
    proc = run(
        "train", "--task", "locate", "--arch", "coordconv906", "--epochs", "1",
        "--without", "peak_init", "--without", "no_l2", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "ours" and config["without"] == ["peak_init", "no_l2"]
    assert config["l2"] == 1e-5  # the paper's, back
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["peak_init"] is False and metrics["settings"]["cosine"] is True
