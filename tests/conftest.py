"""The tiers, marked from their folders, and the shared fixtures: a real server on free loopback
ports (tests/helpers.py has the launchers, `wait_for` and the rest)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run folder of a task trained for 0 epochs (export does not care how good a model is),
    trained on first use and shared by the session: read it, copy it to change it. A 0-epoch run
    still evaluates the whole data set: a minute on 2 busy cores, once instead of per module."""
    root = tmp_path_factory.mktemp("untrained")
    done: dict[str, Path] = {}

    def run(task: str) -> Path:
        if task not in done:
            from experiments.recipe import train_config
            from training.train import train

            train(train_config(task, epochs=0, out=str(root / task), progress=False))
            done[task] = root / task
        return done[task]

    return run


@pytest.fixture
def small_data(monkeypatch):
    """Every fourth sample of a task's train and test sets, for tests of bookkeeping (records,
    resumes, reports, determinism), not of what a model learns."""
    from training import data

    whole = data.task_data

    def task_data(*args, **kwargs):
        d = whole(*args, **kwargs)
        return dataclasses.replace(
            d, **{f.name: getattr(d, f.name)[::4] for f in dataclasses.fields(d)}
        )

    monkeypatch.setattr(data, "task_data", task_data)


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


# The costliest tiers first: with `-n 2` (make test) the long training tests start at once and the
# many short ones fill in around them, instead of a long tail on one process at the end.
RUN_ORDER = ("training", "system", "service", "unit", "bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier(item)))
    items.sort(key=lambda item: RUN_ORDER.index(tier(item)))  # stable: file order kept within
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_works():
        skip = pytest.mark.skip(reason="needs a working CUDA execution provider")
        for item in gpu_items:
            item.add_marker(skip)
