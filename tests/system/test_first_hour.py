"""A newcomer's first hour works as the README and the documentation say: what `make run` installs
covers the examples after it, the roll-out example (docs/model-repository.md) runs as written
against a copy of the shipped repository (a real server on free ports, `coordconv export` writing
a new version beside the shipped ones), and the README and docs/ point to nothing outside the
repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import MODELS, ROOT, TLS, free_port

BIN = Path(sys.executable).parent
README = (ROOT / "README.md").read_text()
# The README's sections moved into the documentation: the examples are the README's and the pages'.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)
GETTING_STARTED = (ROOT / "docs" / "getting-started.md").read_text()
MODEL_REPOSITORY = (ROOT / "docs" / "model-repository.md").read_text()
BLOCKS = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS.findall(DOCS) if kind == lang]


def rollout_blocks() -> tuple[str, str]:
    """The roll-out example: its shell block (explicit mode, `coordconv export`, the load) and
    the Python block right after it (docs/model-repository.md)."""
    found = list(BLOCKS.finditer(MODEL_REPOSITORY))
    for i, m in enumerate(found):
        explicit = "--model-control-mode explicit" in m[2]
        if m[1] == "bash" and explicit and "coordconv export" in m[2]:
            assert found[i + 1][1] == "python", "the roll-out's Python block follows its shell one"
            return m[2], found[i + 1][2]
    raise AssertionError(
        "no roll-out example (explicit mode + coordconv export) in docs/model-repository.md"
    )


def test_make_run_installs_what_the_readme_examples_after_it_import() -> None:
    makefile = (ROOT / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if ln.startswith("RUN_PACKAGES"))
    assert "'.[serve,client]'" in line and "tritonclient[http,grpc]" in line
    assert re.search(r"^run: \$\(VENV\)/\.run$", makefile, re.M)
    python = "\n".join(blocks("python"))
    assert "tritonclient.http" in python and "tritonclient.grpc" in python
    assert re.search(r"coordconv client\s+--help", GETTING_STARTED)
    # and nothing the README or the docs run after `make run` needs torch, except where they say so
    for body in blocks("bash"):
        if re.search(r"^coordconv (train|export|models|reproduce)\b", body, re.M):
            assert "make models" in body or "torch" in body, body


def test_the_readme_and_docs_point_to_nothing_outside_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|REFERENCE\.md|TOOLS\.md|DEVELOPERS\.md|\.\./shared")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        hits = [ln for ln in path.read_text().splitlines() if outside.search(ln)]
        assert not hits, f"{path.relative_to(ROOT)}: {hits}"
    # and every relative link of the README resolves inside it
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), target


@pytest.fixture
def checkout(tmp_path: Path, untrained_run: Callable[[str], Path]) -> Path:
    """A folder laid out as the README's reader has it: the shipped `models/`, and the run folder
    the roll-out exports. The run stands in for `coordconv train --task render --epochs 5`
    (minutes on 2 cores): the shipped render/1 network, its metrics recomputed on its test set
    (what the export writes into the model; its train metrics stay the 0-epoch run's)."""
    import torch

    from training.data import task_data
    from training.onnx_weights import weights_from_onnx
    from training.train import evaluate, load_run

    shutil.copytree(MODELS, tmp_path / "models")
    body, _ = rollout_blocks()
    run_dir = re.search(r"coordconv export (\S+)", body)
    assert run_dir is not None
    run = tmp_path / run_dir[1]
    shutil.copytree(untrained_run("render"), run)  # the session's 0-epoch render run
    torch.save(weights_from_onnx(MODELS / "render" / "1" / "model.onnx"), run / "model.pt")
    model, _, record = load_run(run)
    d = task_data("render", "quadrant")
    record["test"] = evaluate("render", model, d.x_test, d.y_test, d.kinds_test)
    (run / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    return tmp_path


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl, jq")
def test_the_readme_rollout_example_runs_as_written_on_the_shipped_repository(
    checkout: Path,
) -> None:
    shell, python = rollout_blocks()
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `coordconv` as `make run` installs it
        # As from the repository root, where the served and the exported repository are one.
        "COORDCONV_MODEL_DIR": str(checkout / "models"),
        "COORDCONV_PORT": str(port),
        "COORDCONV_GRPC_PORT": str(grpc_port),
        "COORDCONV_LOG_LEVEL": "warning",
    }
    address = f"127.0.0.1:{port}"
    # Files, not pipes: the example's `coordconv serve &` outlives the shell and keeps its output.
    out_file, err_file = checkout / "rollout.out", checkout / "rollout.err"
    with out_file.open("w") as stdout, err_file.open("w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", shell.replace("localhost:8000", address)],
            cwd=checkout,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # the example's server lives in this process group
        )
    try:
        proc.wait(timeout=600)
        out, err = out_file.read_text(), err_file.read_text()
        assert proc.returncode == 0, f"{shell}\n{out}\n{err}"
        assert "exported models/render/3/model.onnx" in out, out
        assert (checkout / "models" / "render" / "3" / "model.onnx").is_file()
        # The last line: the answer came from the new version, as the comment says.
        assert re.search(r"^x-model-version: 3\s*$", out, re.M | re.I), out
        shown = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"name"')]
        assert [(e["version"], e["state"]) for e in shown] == [("2", "READY"), ("3", "READY")]
        index = httpx.post(f"http://{address}/v2/repository/index", timeout=30, verify=TLS).json()
        states = {(m["name"], m.get("version")): m.get("state") for m in index}
        assert states[("render", "3")] == "READY" and states[("render", "2")] == "READY", states
        assert states.get(("render", "1")) != "READY", states  # retired by `latest 2`
        # The Python block right after it, against the same server.
        py = subprocess.run(
            [sys.executable, "-c", python.replace("127.0.0.1:8000", address)],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert py.returncode == 0, f"{python}\n{py.stdout}\n{py.stderr}"
        assert py.stdout.strip().isdigit(), py.stdout
    finally:  # the shell and the server it started: their own process group
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
