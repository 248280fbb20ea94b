"""The batch client's input files: strict numbers (ASCII decimals only), input streamed so memory
stays bounded whatever the CSV size, and the sample inputs in examples/ that the documentation
uses (docs/client.md)."""

from __future__ import annotations

import csv
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from client.files import InputError, read_coords, read_images
from tests.helpers import ROOT
from tests.service.test_client import run_cli
from tests.service.test_client_outputs import one_line, tree

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize(
    "value",
    ["1_0", "１０", "٣", "nan", "NaN", "inf", "-inf", "0x1A", "1 0", "1e", "", "+-1", "1.2.3",
     "1,5", "e3", "10\u00a0", "\u20071"],
)  # fmt: skip
def test_numbers_are_ascii_decimals_only(tmp_path, value) -> None:
    path = tmp_path / "c.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["x", "y"], ["1", "2"], [value, "3"]])
    with pytest.raises(InputError) as info:
        read_coords(path)
    assert str(info.value) == f"{path}:3: x must be a number, got {value!r}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("+1.5", 1.5), (".5", 0.5), ("5.", 5.0), ("1e1", 10.0), ("2.5E-1", 0.25),
     (" 12\t", 12.0), ("0063", 63.0), ("-0", 0.0)],
)  # fmt: skip
def test_strict_numbers_that_are_accepted(tmp_path, value, expected) -> None:
    path = tmp_path / "c.csv"
    path.write_text(f"x,y\n{value},{value}\n")
    (batch,) = read_coords(path).batches(64)
    assert batch.payload.tolist() == [[expected, expected]]


def test_a_bad_number_exits_2_with_one_line_and_writes_nothing(tmp_path) -> None:
    (tmp_path / "c.csv").write_text("id,x,y\na,1,2\nb,1_0,2\n")
    code, err = run_cli(
        "render", "--input", str(tmp_path / "c.csv"), "--output", str(tmp_path / "o"),
        "--url", "http://127.0.0.1:9",
    )  # fmt: skip
    assert code == 2
    assert (
        one_line(err) == f"coordconv client: {tmp_path / 'c.csv'}:3: x must be a number, got '1_0'"
    )
    assert tree(tmp_path) == ["c.csv"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"x": NaN, "y": 1}', "x must be a number, got 'NaN'"),
        ('{"x": 1, "y": Infinity}', "y must be a number, got 'Infinity'"),
        ('{"x": "10", "y": 1}', "x must be a number, got '10'"),
        ('{"x": true, "y": 1}', "x must be a number, got True"),
        ('{"x": 1e400, "y": 1}', "x = inf is not in [0, 63]"),
    ],
)
def test_jsonl_values_must_be_json_numbers(tmp_path, line, message) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"x": 1, "y": 2}\n' + line + "\n")
    with pytest.raises(
        InputError, match=rf"c\.jsonl:2: {message.replace('[', '.').replace(']', '.')}"
    ):
        read_coords(path)


def test_errors_name_the_first_bad_line_among_thousands(tmp_path) -> None:
    path = tmp_path / "c.csv"
    rows = [f"p{i},{i % 60},{i % 50}" for i in range(20_000)]
    rows[12_345] = "p12345,3,٣"
    rows[17_000] = "p17000,99,1"
    path.write_text("id,x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"c\.csv:12347: y must be a number, got '٣'"):
        read_coords(path)
    rows[12_345] = "p1,3,3"  # a duplicate id, reported with both places
    rows[17_000] = "p17000,1,1"
    path.write_text("id,x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"c\.csv:12347: duplicate id 'p1' \(first at item 1\)"):
        read_coords(path)


def test_streamed_input_keeps_memory_bounded(tmp_path) -> None:
    """Reading and batching 60,000 rows holds a few MB (8 bytes a row for the duplicate-id
    check, and one chunk of rows), not the whole file as Python objects (~23 MB before)."""
    path = tmp_path / "big.csv"
    n = 60_000
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 64, size=(n, 2))
    with open(path, "w") as f:
        f.write("id,x,y\n")
        f.writelines(f"item-{i:07d},{x},{y}\n" for i, (x, y) in enumerate(xy.tolist()))
    tracemalloc.start()
    try:
        items = read_coords(path)
        scanned = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        count, total = 0, 0.0
        for batch in items.batches(64):
            count += len(batch)
            total += float(batch.payload.sum())
        streamed = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(items) == count == n and total == float(xy.sum())
    assert scanned < 8 * n + 3_500_000, scanned
    assert streamed < 3_500_000, streamed


# -- examples/ ------------------------------------------------------------------------------------


def test_the_examples_are_valid_client_input() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_examples.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    coords = read_coords(EXAMPLES / "coords.csv")
    assert 3 <= len(coords) <= 20 and len(set(coords.iter_names())) == len(coords)
    images = read_images(EXAMPLES / "pngs")
    assert 3 <= len(images) <= 20
    assert all((EXAMPLES / "pngs" / f"{n}.png").stat().st_size < 1024 for n in images.iter_names())


def test_the_readme_examples_run(server, tmp_path) -> None:
    code, err = run_cli(
        "render", "--input", str(EXAMPLES / "coords.csv"), "--output", str(tmp_path / "renders"),
        "--url", server.url,
    )  # fmt: skip
    assert code == 0, err
    names = list(read_coords(EXAMPLES / "coords.csv").iter_names())
    assert tree(tmp_path / "renders") == sorted(
        [".coordconv-job.json", *(f"{n}.png" for n in names)]
    )
    out = tmp_path / "located.csv"
    code, err = run_cli(
        "locate", "--input", str(EXAMPLES / "pngs"), "--output", str(out), "--url", server.url,
        "--min-confidence", "0.5",
    )  # fmt: skip
    assert code == 0, err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # named after their centre: x12-y20
        x, y = (float(part[1:]) for part in row["name"].split("-"))
        assert abs(float(row["x"]) - x) <= 0.5 and abs(float(row["y"]) - y) <= 0.5, row
        assert row["below_min_confidence"] == "false"
    assert len(rows) == len(list((EXAMPLES / "pngs").glob("*.png")))
    # the renders located back: the coordinates of examples/coords.csv
    code, err = run_cli(
        "locate", "--input", str(tmp_path / "renders"), "--output", str(tmp_path / "back.csv"),
        "--url", server.url,
    )  # fmt: skip
    assert code == 0, err
    (batch,) = read_coords(EXAMPLES / "coords.csv").batches(64)
    truth = dict(zip(batch.names, batch.payload.tolist(), strict=True))
    with open(tmp_path / "back.csv", newline="") as f:
        back = {r["name"]: (float(r["x"]), float(r["y"])) for r in csv.DictReader(f)}
    assert set(back) == set(truth)
    for name, (x, y) in back.items():  # a real-valued point renders at its nearest centre
        assert abs(x - truth[name][0]) <= 1 and abs(y - truth[name][1]) <= 1, name


def test_the_readme_client_block_runs_as_written(server, tmp_path) -> None:
    """The batch-client block of the documentation (docs/client.md, where the README's section
    moved), line by line as a user types it (from a copy of the repository's examples/,
    COORDCONV_URL pointing at a live server): every command exits 0 and leaves the outputs it
    names, the renders located back at the points of examples/coords.csv."""
    import os
    import re
    import shutil

    page = (ROOT / "docs" / "client.md").read_text()
    section = page[page.index("## `coordconv client`") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [ln for ln in block.group(1).splitlines() if ln.startswith("coordconv client")]
    assert len(commands) >= 5
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    env = {
        **os.environ,
        "COORDCONV_URL": server.url,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    for command in commands:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    names = list(read_coords(EXAMPLES / "coords.csv").iter_names())
    assert sorted(p.name for p in (tmp_path / "renders").glob("*.png")) == sorted(
        f"{n}.png" for n in names
    )
    assert np.load(tmp_path / "renders.npy").shape == (len(names), 64, 64)
    (batch,) = read_coords(EXAMPLES / "coords.csv").batches(64)
    truth = dict(zip(batch.names, batch.payload.tolist(), strict=True))
    with open(tmp_path / "back.csv", newline="") as f:
        for row in csv.DictReader(f):
            x, y = truth[row["name"]]
            assert abs(float(row["x"]) - x) <= 0.5 and abs(float(row["y"]) - y) <= 0.5, row
