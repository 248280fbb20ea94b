"""The tiers, marked from their folders, and the shared fixtures: a real server on free loopback
ports (tests/helpers.py has the launchers, `wait_for` and the rest)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import MODELS, LiveServer

# Under pytest-xdist each worker is a process of its own, busy most of the time: one torch (OpenMP)
# thread each keeps the workers from fighting over the cores; with torch's default of one thread
# per core, a 0-epoch locate run beside another took 20 s, with one thread 8 s. Set before any
# test module imports torch; the processes the tests start inherit it.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# tests/<tier>/...: each test carries its folder's marker (`pytest -m unit`, `-m "not system"`).
TIERS = ("unit", "service", "system", "training", "bench")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with LiveServer() as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def slow_server() -> Iterator[LiveServer]:
    """render and locate, each request waiting 20 ms for its batch to fill, so a batch client
    can be killed midway."""
    with LiveServer(("render", "locate"), max_queue_delay_us=20_000) as live:
        yield live


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run folder of a task trained for 0 epochs (export does not care how good a model is),
    trained on first use and shared by the session: read it, copy it to change it. A 0-epoch run
    still evaluates its data set: every fourth sample here (`quarter_of_the_data`), so its
    metrics.json describes that quarter; the export verifies on every sample all the same."""
    root = tmp_path_factory.mktemp("untrained")
    done: dict[str, Path] = {}

    def run(task: str) -> Path:
        if task not in done:
            from experiments.recipe import train_config
            from training.train import train

            with pytest.MonkeyPatch.context() as mp:
                quarter_of_the_data(mp)
                train(train_config(task, epochs=0, out=str(root / task), progress=False))
            done[task] = root / task
        return done[task]

    return run


def quarter_of_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fourth sample of a task's train and test sets (training.data.task_data)."""
    from training import data

    whole = data.task_data

    def task_data(*args: Any, **kwargs: Any) -> Any:
        d = whole(*args, **kwargs)
        return dataclasses.replace(
            d, **{f.name: getattr(d, f.name)[::4] for f in dataclasses.fields(d)}
        )

    monkeypatch.setattr(data, "task_data", task_data)


@pytest.fixture
def small_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fourth sample of a task's train and test sets, for tests of bookkeeping (records,
    resumes, reports, determinism), not of what a model learns."""
    quarter_of_the_data(monkeypatch)


def _cuda_works() -> bool:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False
        ort.set_default_logger_severity(4)
        probe = ort.InferenceSession(
            str(MODELS / "locate" / "1" / "model.onnx"),
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
        ort.set_default_logger_severity(2)
        return "CUDAExecutionProvider" in probe.get_providers()
    except Exception:
        return False


def tier(item: pytest.Item) -> str:
    """The tier of a test: the folder under tests/ it lies in."""
    parts = Path(item.path).resolve().relative_to(HERE).parts
    if len(parts) < 2 or parts[0] not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: a test lies in one of tests/{{{','.join(TIERS)}}}")
    return parts[0]


# The longest files first, with about the seconds each took in one pass (2 processes on 2 cores,
# 2026-12-07): pytest-xdist hands out whole files in this order (--no-loadscope-reorder), so the
# short files fill in around the long ones instead of one long file running alone at the end. The
# rest follow by tier.
LONGEST = {
    "training/test_train.py": 82,
    "service/test_client.py": 74,
    "training/test_export.py": 66,
    "service/test_full_canvas.py": 64,
    "system/test_shutdown.py": 59,
    "service/test_client_outputs.py": 58,
    "system/test_control_storm.py": 56,
    "system/test_first_hour.py": 51,
    "system/test_workers.py": 37,
    "system/test_ray.py": 34,
    "training/test_reproduce.py": 32,
    "service/test_model_control.py": 25,
    "service/test_repository.py": 24,
}
RUN_ORDER = ("training", "system", "service", "unit", "bench")


def run_order(item: pytest.Item) -> tuple[int, int]:
    path = Path(item.path).resolve().relative_to(HERE).as_posix()
    return -LONGEST.get(path, 0), RUN_ORDER.index(tier(item))


# `make pytest-serial` collects only the files that hold the text below (collecting every file
# took 8 s of its minute): a serial test marked any other way would be run by neither pass.
SERIAL_MARK = "pytest.mark.serial"


def pytest_itemcollected(item: pytest.Item) -> None:
    if item.get_closest_marker("serial") and SERIAL_MARK not in Path(item.path).read_text():
        raise pytest.UsageError(
            f"{item.nodeid}: mark a serial test with `@{SERIAL_MARK}` (or `pytestmark = "
            f"{SERIAL_MARK}`): `make pytest-serial` finds its files by that text"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier(item)))
    items.sort(key=run_order)  # stable: the order within a file is kept
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_works():
        skip = pytest.mark.skip(reason="needs a working CUDA execution provider")
        for item in gpu_items:
            item.add_marker(skip)
