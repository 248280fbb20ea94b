"""The images built and run on a real Docker engine (`make docker-test`): the serving image from the
Dockerfile unchanged with the command a Docker user types first (`docker build -t NAME .`, no
target: no torch in it, the same image as `--target serve`), the `cpu` profile up and healthy
behind its published ports, the `client`
profile rendering a CSV into ./work as the invoking user, `docker compose stop` under load losing
nothing, and the `trainer` profile retraining and exporting from its own stage.

Skipped, loudly, where no Docker engine answers (`DOCKER_TEST=require` makes that a failure). The
figures (image size, build time, time to healthy, requests during `stop`) are printed and written
to runs/docker-test.json."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, TLS, free_port
from training import data, metrics

pytestmark = [pytest.mark.docker]

IMAGE = "coordconv-serving:test"
TRAIN_IMAGE = "coordconv-trainer:test"
FIGURES: dict[str, Any] = {}


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        p = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 20 s"
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["`docker info` failed"])[-1]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "`docker compose` (Compose v2) is not installed"
    return None


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    problem = _engine_problem()
    if problem is None:
        return
    message = (
        f"NO DOCKER ENGINE: {problem}. The image, compose, the client and the drain on stop are "
        "NOT tested. Start a Docker engine with the Compose v2 plugin (`docker info` and "
        "`docker compose version` answer), or set DOCKER_TEST=require to make this a failure."
    )
    if os.environ.get("DOCKER_TEST") == "require":
        pytest.fail(message)
    pytest.skip(message)


def docker(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run `docker ARGS` (the classic builder: BuildKit fetches its frontend from a registry)."""
    full_env = {
        **os.environ,
        "DOCKER_BUILDKIT": "0",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
        **(env or {}),
    }
    p = subprocess.run(
        ["docker", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    assert p.returncode == 0, (
        f"docker {' '.join(args)} failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}"
    )
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def wheels() -> Iterator[dict[str, str]]:
    """Where PyTorch's CPU index cannot be reached: a local wheel folder served on the loopback
    for the trainer's stage (the same URL for every build, so the second build is cached)."""
    extra, server = _wheel_server()
    try:
        yield extra
    finally:
        if server is not None:
            server.shutdown()


def wheel_build_args(extra: dict[str, str]) -> list[str]:
    """`docker build` options that point the trainer's stage at `wheels` (none where not needed)."""
    if not extra:
        return []
    return [
        "--network",
        "host",
        "--build-arg",
        "TORCH_INDEX_URL=",
        "--build-arg",
        f"PIP_FIND_LINKS={extra['COORDCONV_WHEELS_URL']}",
    ]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout of its own (the files git would hand a clone, with this tree's edits): every
    image is built from it, and compose runs in it, so its ./models and ./work are not the
    repository's."""
    root = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    return root


@pytest.fixture(scope="module")
def serving_image(wheels: dict[str, str], checkout: Path) -> str:
    # What a Docker user types first: no --target. The classic builder used here builds every
    # stage above the last one, the trainer's too (BuildKit skips it), hence the wheel folder;
    # the trainer profile's build below then finds that stage in the cache.
    t0 = time.monotonic()
    out = docker(
        "build", *wheel_build_args(wheels), "-t", IMAGE, str(checkout), env={"PWD": str(checkout)}
    )
    FIGURES["build_s"] = round(time.monotonic() - t0, 1)
    FIGURES["build_cached"] = "Using cache" in out and "Step" in out
    # "Sending build context to Docker daemon  2.05MB"
    sent = next(line for line in out.splitlines() if "Sending build context" in line)
    FIGURES["context"] = sent.rsplit(" ", 1)[-1]
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).strip())
    FIGURES["image_mb"] = round(size / 1e6)
    return IMAGE


def test_docker_build_without_a_target_is_the_serving_image_without_torch(
    serving_image: str, checkout: Path
) -> None:
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", serving_image))
    assert config["Cmd"] == ["coordconv", "serve"] and config["User"] == "10001"
    assert "COORDCONV_MODEL_DIR=/models" in config["Env"]
    probe = subprocess.run(
        ["docker", "run", "--rm", serving_image, "python", "-c", "import torch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, probe.stderr
    # ... and what it does have: the service's dependencies and the client's.
    docker("run", "--rm", serving_image, "python", "-c", "import onnxruntime, fastapi, httpx")
    # The last stage is `serve` itself: asking for it by name gives the very same image.
    image_id = docker("image", "inspect", "-f", "{{.Id}}", serving_image).strip()
    built = docker("build", "-q", "--target", "serve", str(checkout))  # (and a deprecation note)
    serve_id = next(w for w in built.split() if w.startswith("sha256:"))
    assert serve_id == image_id
    FIGURES["default_is_serve"] = True


class Project:
    """One compose project on free loopback ports, in a folder of its own (./models copied, ./work
    owned by `uid`, as a user's checkout would be), torn down afterwards."""

    def __init__(self, root: Path, uid: int) -> None:
        self.root = root
        self.name = f"coordconv-test-{uuid.uuid4().hex[:8]}"
        self.port, self.grpc_port = free_port(), free_port()
        self.uid = uid
        self.env = {
            "COORDCONV_IMAGE": IMAGE,
            "COORDCONV_TRAIN_IMAGE": TRAIN_IMAGE,
            "COORDCONV_PUBLISH_PORT": str(self.port),  # on 127.0.0.1, compose's default
            "COORDCONV_PUBLISH_GRPC_PORT": str(self.grpc_port),
            "COORDCONV_UID": str(uid),
            "COORDCONV_GID": str(uid),
            "COORDCONV_GRACE_S": "10",
            # The supervisor as the container's first process, two workers behind one port: the
            # stop under load below drains both.
            "COORDCONV_WORKERS": "2",
        }
        self.url = f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 900) -> str:
        return docker(
            "compose",
            "--project-directory",
            str(self.root),
            "-p",
            self.name,
            *args,
            env=self.env,
            timeout=timeout,
        )

    def container(self, service: str) -> str:
        return self.compose("ps", "-a", "-q", service).strip().splitlines()[-1]

    def inspect(self, service: str) -> dict[str, Any]:
        result: list[dict[str, Any]] = json.loads(docker("inspect", self.container(service)))
        return result[0]


@pytest.fixture(scope="module")
def project(serving_image: str, checkout: Path) -> Iterator[Project]:
    root = checkout
    # The invoking user: a plain user, not root, even where the test runs as root.
    uid = os.getuid() or 4242
    (root / "work").mkdir()
    os.chown(root / "work", uid, uid)
    os.chown(root / "models", uid, uid)
    for path in (root / "models").rglob("*"):
        os.chown(path, uid, uid)
    p = Project(root, uid)
    try:
        t0 = time.monotonic()
        p.compose("--profile", "cpu", "up", "-d", "--no-build")
        ready = None
        while time.monotonic() - t0 < 120:
            if ready is None:
                try:
                    if httpx.get(p.url + "/readyz", timeout=2, verify=TLS).status_code == 200:
                        ready = time.monotonic() - t0
                except httpx.TransportError:
                    pass
            health = p.inspect("service-cpu")["State"].get("Health", {}).get("Status")
            if health == "healthy" and ready is not None:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not healthy in 120 s:\n{p.compose('logs', '--tail', '50')}")
        FIGURES["ready_s"] = round(ready, 1)
        FIGURES["healthy_s"] = round(time.monotonic() - t0, 1)
        yield p
    finally:
        profiles = ["--profile", "cpu", "--profile", "client", "--profile", "trainer"]
        with contextlib.suppress(AssertionError):
            p.compose(*profiles, "down", "-v", "--remove-orphans", timeout=120)
        report = ROOT / "runs" / "docker-test.json"
        report.parent.mkdir(exist_ok=True)
        report.write_text(json.dumps(FIGURES, indent=2) + "\n")
        print("\ndocker-test figures:", json.dumps(FIGURES))


def test_the_cpu_profile_runs_hardened_and_serves_render_and_v2_through_its_port(
    project: Project,
) -> None:
    state = project.inspect("service-cpu")
    assert state["Config"]["User"] == "10001"
    host = state["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    container = project.container("service-cpu")
    assert docker("exec", container, "id", "-u").strip() == "10001"
    # Read-only root: nothing can be written outside the tmpfs.
    denied = subprocess.run(
        ["docker", "exec", container, "python", "-c", "open('/opt/venv/x', 'w')"],
        capture_output=True,
        text=True,
    )
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # No build tools or tests in the serving image.
    listing = docker("exec", container, "sh", "-c", "ls /opt/venv/bin /")
    assert "pip" not in listing.split() and "tests" not in listing.split()

    coords = data.centres()[[0, 500, 3000]]
    r = httpx.post(
        project.url + "/v1/render",
        json={"coords": coords.tolist(), "format": "array"},
        timeout=10,
        verify=TLS,
    )
    assert r.status_code == 200, r.text
    images = np.asarray(r.json()["images"], np.float32)
    assert metrics.iou(images, data.squares(coords)).min() >= 0.99
    body = {
        "inputs": [
            {"name": "coords", "shape": [3, 2], "datatype": "FP32", "data": coords.ravel().tolist()}
        ]
    }
    r = httpx.post(project.url + "/v2/models/render/infer", json=body, timeout=10, verify=TLS)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [3, 64, 64]
    v2 = np.asarray(out["data"], np.float32).reshape(3, 64, 64)
    assert metrics.iou(v2, data.squares(coords)).min() >= 0.99
    # Both workers answer through the published port (each new connection goes to one of them).
    workers = {
        httpx.get(project.url + "/healthz", timeout=10, verify=TLS).json()["worker"]
        for _ in range(60)
    }
    assert workers == {0, 1}
    FIGURES["workers"] = len(workers)


def test_the_client_profile_renders_a_csv_into_work_as_the_invoking_user(project: Project) -> None:
    coords = data.centres()[:40]
    csv = project.root / "work" / "coords.csv"
    csv.write_text("x,y\n" + "".join(f"{x:g},{y:g}\n" for x, y in coords))
    os.chown(csv, project.uid, project.uid)
    project.compose("--profile", "cpu", "--profile", "client", "run", "--rm", "client")
    renders = project.root / "work" / "renders"
    files = sorted(p for p in renders.rglob("*") if p.is_file())
    assert len([p for p in files if p.suffix == ".png"]) == len(coords)  # and its job record
    for path in [renders, *files]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (project.uid, project.uid), path
    FIGURES["client_files"] = len(files)
    # the same command again: this job's finished output, nothing sent, nothing changed
    project.compose("--profile", "cpu", "--profile", "client", "run", "--rm", "client")
    assert sorted(p for p in renders.rglob("*") if p.is_file()) == files


def _hammer(url: str, client_id: int, stop_at: float) -> list[tuple[str, int | str]]:
    """One client: render requests back to back until the server goes away; (request id,
    status or the transport error's name) for each."""
    seen: list[tuple[str, int | str]] = []
    coords = data.centres()[client_id::97][:8]
    with httpx.Client(timeout=30, verify=TLS) as client:
        n = 0
        while time.monotonic() < stop_at:
            rid = f"c{client_id:02d}-{n:05d}"
            n += 1
            try:
                r = client.post(
                    url + "/v1/render",
                    json={"coords": [coords[n % len(coords)].tolist()]},
                    headers={"X-Request-ID": rid},
                )
            except httpx.TransportError as exc:
                seen.append((rid, type(exc).__name__))
                break  # the server is gone: what was not sent was never accepted
            if r.status_code == 503:
                assert r.headers.get("retry-after"), r.text
            seen.append((rid, r.status_code))
    return seen


def test_compose_stop_under_32_clients_answers_every_accepted_request_and_exits_0(
    project: Project,
) -> None:
    grace = 20  # stop_grace_period in docker-compose.yml (> DRAIN_DELAY_S 5 + GRACE_S 10)
    stop_at = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(_hammer, project.url, i, stop_at) for i in range(32)]
        time.sleep(3)
        t0 = time.monotonic()
        project.compose("--profile", "cpu", "stop", "service-cpu", timeout=60)
        stopped_s = time.monotonic() - t0
        seen = [item for f in futures for item in f.result()]
    state = project.inspect("service-cpu")["State"]
    logs = project.compose("logs", "--no-color", "--no-log-prefix", "service-cpu")
    logged: dict[str, int] = {}
    for line in logs.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("path") == "/v1/render" and record.get("request_id", "").startswith("c"):
                logged[record["request_id"]] = record["status"]
    answered = {rid: s for rid, s in seen if isinstance(s, int)}
    errors = [(rid, s) for rid, s in seen if not isinstance(s, int)]
    # Every request the server accepted and answered reached its client, with the same status.
    lost = {rid: s for rid, s in logged.items() if answered.get(rid) != s}
    assert not lost, f"{len(lost)} answered by the server but not received: {list(lost)[:5]}"
    failed = {rid: s for rid, s in answered.items() if s not in (200, 503)}
    assert not failed, failed
    # Each client saw at most its last request go unanswered: one the server never accepted.
    assert len(errors) <= 32 and not (set(dict(errors)) & set(logged))
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stopped_s < grace
    FIGURES.update(
        stop_s=round(stopped_s, 1),
        requests_sent=len(seen),
        answered_200=sum(s == 200 for s in answered.values()),
        answered_503=sum(s == 503 for s in answered.values()),
        not_accepted=len(errors),
        failed=len(failed) + len(lost),
        exit_code=state["ExitCode"],
    )
    assert FIGURES["answered_200"] > 100  # the load was real


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _wheel_server() -> tuple[dict[str, str], http.server.ThreadingHTTPServer | None]:
    """Where PyTorch's CPU index cannot be reached but a local wheel folder exists (PIP_FIND_LINKS,
    as on the development machines), serve that folder on the loopback for the build."""
    folder = os.environ.get("PIP_FIND_LINKS", "")
    if not folder or not Path(folder).is_dir() or not list(Path(folder).glob("torch-*.whl")):
        return {}, None
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=folder)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    return {"TORCH_INDEX_URL": "", "COORDCONV_WHEELS_URL": url}, server


def test_the_trainer_profile_builds_its_stage_and_exports_a_model_as_the_user(
    project: Project, wheels: dict[str, str]
) -> None:
    project.env.update(wheels)
    t0 = time.monotonic()
    project.compose("--profile", "trainer", "build", "trainer", timeout=1800)
    FIGURES["train_build_s"] = round(time.monotonic() - t0, 1)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", TRAIN_IMAGE).strip())
    FIGURES["train_image_mb"] = round(size / 1e6)
    config = project.compose("--profile", "trainer", "config", "--format", "json")
    trainer = json.loads(config)["services"]["trainer"]
    assert trainer["command"] is None or trainer["command"] == [
        "coordconv",
        "models",
        "--repo",
        "/models",
        "--runs",
        "/tmp/runs",
    ]
    # The default command retrains all six shipped models (baselines for 100 epochs); this
    # proves the same image, mount and user with one short run and its export.
    script = (
        "coordconv train --task pixel --split quadrant --epochs 1 --no-progress --out /tmp/runs/p"
        " && coordconv export /tmp/runs/p --name pixel --repo /models --version 9"
    )
    out = project.compose("--profile", "trainer", "run", "--rm", "trainer", "sh", "-c", script)
    assert "exported" in out, out
    exported = project.root / "models" / "pixel" / "9" / "model.onnx"
    assert exported.is_file()
    st = exported.stat()
    assert (st.st_uid, st.st_gid) == (project.uid, project.uid)


def test_the_gpu_and_triton_profiles_are_valid_for_compose_itself(project: Project) -> None:
    # Their images need a GPU and NVIDIA's registry, neither of which is here: compose checks them.
    config = json.loads(
        project.compose("--profile", "gpu", "--profile", "triton", "config", "--format", "json")
    )
    gpu, triton = config["services"]["service"], config["services"]["triton"]
    assert gpu["environment"]["COORDCONV_REQUIRE_GPU"] == "true"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["read_only"] is True and gpu["cap_drop"] == ["ALL"]
    assert triton["command"][0] == "tritonserver"
