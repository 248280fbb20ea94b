"""Every shell example of the README that talks to the service runs as written (against a live
server on a free port instead of 8000), in order, in one directory: files one example makes
(square.png, images.npy) are what the next one uses."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, live_server

BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def service_examples() -> list[str]:
    """The bash blocks made only of curl commands (comments and continuations allowed)."""
    blocks = []
    for block in BLOCK.findall((ROOT / "README.md").read_text()):
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
        starts = [ln for ln in lines if not ln.startswith((" ", "\t"))]
        if starts and all(ln.startswith("curl ") for ln in starts):
            blocks.append(block)
    return blocks


def test_the_readme_has_service_examples() -> None:
    assert len(service_examples()) >= 5


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl, jq")
def test_every_readme_service_example_runs_as_written(tmp_path) -> None:
    with live_server() as live:
        outputs = []
        for block in service_examples():
            script = block.replace("localhost:8000", f"127.0.0.1:{live.port}")
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, f"{block}\n{proc.stderr}"
            assert '"detail"' not in proc.stdout and '"error"' not in proc.stdout, (
                f"{block}\n{proc.stdout[:500]}"
            )
            outputs.append(proc.stdout)
    shown = '{"model":"locate","version":"2","coords":[[10,20],[40,33]],"ok":[true,true]}'
    assert any(shown in out for out in outputs)  # the answer the README shows
    assert (tmp_path / "square.png").stat().st_size > 0
