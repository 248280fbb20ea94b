"""Warm-up, in one place: the rule a config's `model_warmup` must meet (`check`, before anything
is allocated), the files it names (`read_files`, from the model folder's warmup/ as Triton reads
them), and the runs themselves (`run`, before the version takes traffic): the config's samples,
else a default warm-up at batch 1 and at the largest batch up to WARMUP_ITEMS, so first
requests do not pay for allocation. Each run's outputs must have the declared shapes and be
finite; a failure fails the load. `WarmupGuard` stops a warm-up between two runs when the server
shuts down, or when it has run longer than LIMIT_WARMUP_S.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np

from coordconv.triton import Tensor
from service.errors import LoadCancelled, ModelError
from service.models import repository
from service.models.config import ModelConfig, Scheduling, is_ensemble, item_dims, mc
from service.models.rules import InputRange
from service.settings import Settings

WARMUP_DIR = "warmup"  # model_warmup input_data_file: <model>/warmup/<file>, as in Triton
WARMUP_ITEMS = 64
WARMUP_FILE_BYTES = 64 << 20  # one warm-up sample of one input (64x64 FP32 is 16 KiB)
Feeds = dict[str, np.ndarray]


class Warmable(Protocol):
    """What a warm-up runs on: a version being opened."""

    name: str
    config: ModelConfig
    scheduling: Scheduling
    inputs: list[Tensor]
    outputs: list[Tensor]

    @property
    def input(self) -> Tensor: ...

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


@dataclass
class WarmupGuard:
    """Checked before every warm-up run (and before a session is built): a load stops there
    when the server is shutting down (`stop`, set from the event loop), and a warm-up that has
    run longer than LIMIT_WARMUP_S fails its load. One run is the longest either waits."""

    stop: threading.Event
    limit_s: float
    started: float = field(default_factory=time.monotonic)

    def check(self, where: str) -> None:
        if self.stop.is_set():
            raise LoadCancelled(f"{where}: load cancelled: the server is shutting down")
        if time.monotonic() - self.started > self.limit_s:
            raise ModelError(
                f"{where}: warm-up ran longer than LIMIT_WARMUP_S={self.limit_s:g} s; ask "
                "model_warmup for fewer or smaller runs, or raise the limit"
            )


def check(config: ModelConfig, where: str, settings: Settings) -> None:
    """`model_warmup` as Triton reads it (a sample per entry: `batch_size`, `count` runs, and
    for every model input its `data_type`, `dims` without the batch axis and one of `zero_data`,
    `random_data` or `input_data_file`), refused with one line where it cannot run, before
    anything is allocated. A model that does not batch warms up with batch_size 1 and dims that
    start with the number of rows, as its requests do."""
    if not config.model_warmup:
        return
    if is_ensemble(config):
        raise ModelError(
            f"{where}: model_warmup is not supported for an ensemble; warm up its step models"
        )
    batching = config.max_batch_size > 0
    inputs = {e.name: e for e in config.input}
    runs = 0
    for i, sample in enumerate(config.model_warmup):
        label = f"{where}: {_label(i, sample.name)}"
        if sample.batch_size < 1:
            raise ModelError(f"{label}: batch_size must be >= 1, got {sample.batch_size}")
        if batching and sample.batch_size > config.max_batch_size:
            raise ModelError(
                f"{label}: batch_size {sample.batch_size} exceeds max_batch_size "
                f"{config.max_batch_size}"
            )
        if not batching and sample.batch_size != 1:
            raise ModelError(
                f"{label}: a model that does not batch (max_batch_size 0) warms up with "
                f"batch_size 1, got {sample.batch_size}"
            )
        runs += max(sample.count, 1)  # count 0: once, as in Triton
        if set(sample.inputs) != set(inputs):
            raise ModelError(
                f"{label}: inputs {sorted(sample.inputs)} must be exactly the model's inputs "
                f"{sorted(inputs)}"
            )
        for key in sorted(sample.inputs):
            spec, entry = sample.inputs[key], inputs[key]
            if spec.data_type != entry.data_type:
                raise ModelError(
                    f"{label}: input {key!r} is {mc.DataType.Name(spec.data_type)}; the model "
                    f"takes {mc.DataType.Name(entry.data_type)}"
                )
            want = item_dims(entry, batching)
            dims = tuple(spec.dims)
            shown: list[int | str] = list(want)
            if batching:
                fits = dims == want
            else:
                fits = len(dims) == len(want) + 1 and dims[0] >= 1 and dims[1:] == want
                shown = ["rows", *want]
            if not fits:
                raise ModelError(
                    f"{label}: input {key!r} has dims {list(dims)}; the model takes {shown} "
                    "(without the batch axis)"
                )
            which = spec.WhichOneof("input_data_type")
            if which is None:
                raise ModelError(
                    f"{label}: input {key!r} sets none of zero_data, random_data, input_data_file"
                )
            if which == "input_data_file":
                file_path(spec.input_data_file, f"{label}: input {key!r}")
    if runs > settings.limit_warmup_runs:
        raise ModelError(
            f"{where}: model_warmup asks for {runs} runs in all (count), over the limit "
            f"{settings.limit_warmup_runs} (LIMIT_WARMUP_RUNS)"
        )


def _label(i: int, name: str) -> str:
    return f"model_warmup[{i}]" + (f" {name[:40]!r}" if name else "")


def file_path(name: str, label: str) -> PurePosixPath:
    """A warm-up input_data_file as a path relative to the model's warmup/ folder; anything
    that could leave it (absolute, '..', a backslash) is refused with one line."""
    path = PurePosixPath(name)
    if (
        not name
        or len(name) > 255
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
    ):
        raise ModelError(
            f"{label}: input_data_file {name[:80]!r} must name a file inside the model's "
            f"{WARMUP_DIR}/ folder (no absolute path, no '..')"
        )
    return path


def read_files(repo: Path, name: str, config: ModelConfig) -> dict[str, bytes]:
    """The files a config's model_warmup names (input_data_file), by name, read from the model
    folder's warmup/ as Triton does. A name that leads out of that folder (checked by name, and
    again after symbolic links are resolved), a missing file or one that is not a regular file
    fails the load with one line. Blocks: the registry runs it through `Reads`."""
    folder = repo / name / WARMUP_DIR
    out: dict[str, bytes] = {}
    for i, sample in enumerate(config.model_warmup):
        for key in sorted(sample.inputs):
            spec = sample.inputs[key]
            if spec.WhichOneof("input_data_type") != "input_data_file":
                continue
            file = spec.input_data_file
            if file in out:
                continue
            label = f"model {name}: {_label(i, sample.name)}: input {key!r}"
            rel = file_path(file, label)
            path = folder / rel
            what = f"{name}/{WARMUP_DIR}/{rel}"
            if not (repository.inside(path, folder) and repository.inside(path, repo / name)):
                raise ModelError(f"{label}: {what} leads out of {name}/{WARMUP_DIR}/")
            data = repository.read_regular(path, WARMUP_FILE_BYTES, what)
            if data is None:
                raise ModelError(f"{label}: input_data_file {what} does not exist")
            out[file] = data
    return out


def run(
    m: Warmable,
    where: str,
    files: dict[str, bytes],
    guard: WarmupGuard,
    input_range: Callable[[str], InputRange],
) -> None:
    """Every warm-up run of `m` (its config's samples, else the default ones), each checked."""
    for label, feeds, count in _samples(m, where, files, input_range):
        n = len(feeds[m.input.name])
        for _ in range(count):
            guard.check(where)
            try:
                outs = m.run(feeds[m.input.name])
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"{where}: warm-up {label} failed: {first[:300]}") from None
            for t, out in zip(m.outputs, outs, strict=True):
                if out.shape != (n, *t.dims):
                    raise ModelError(
                        f"{where}: warm-up {label} gave {t.name} of shape {list(out.shape)}; "
                        f"want {[n, *t.dims]}"
                    )
                if not np.isfinite(out).all():
                    raise ModelError(
                        f"{where}: warm-up {label} gave {t.name} with values that are not finite"
                    )


def _samples(
    m: Warmable, where: str, files: dict[str, bytes], input_range: Callable[[str], InputRange]
) -> Iterator[tuple[str, Feeds, int]]:
    """(label, inputs by name, runs) of each warm-up sample. The config's (checked by `check`),
    as Triton runs them: zeros, random values in the input's valid range, or an
    input_data_file (little-endian FP32, row-major, one sample: the batch repeats it). Without
    any: typical values at batch 1 and at the largest batch up to WARMUP_ITEMS (a bounded
    warm-up: a large max_batch_size does not allocate its whole batch at load)."""
    if not m.config.model_warmup:
        for n in sorted({1, min(max(m.scheduling.max_batch_size, 1), WARMUP_ITEMS)}):
            typical = {
                t.name: np.full((n, *t.dims), input_range(t.name).typical, np.float32)
                for t in m.inputs
            }
            yield f"at batch {n}", typical, 1
        return
    rng = np.random.default_rng(0)
    for i, sample in enumerate(m.config.model_warmup):
        label = _label(i, sample.name)
        feeds: Feeds = {}
        for t in m.inputs:
            spec = sample.inputs[t.name]
            dims = tuple(spec.dims)
            which = spec.WhichOneof("input_data_type")
            if which == "zero_data":
                one = np.zeros(dims, np.float32)
            elif which == "random_data":
                valid = input_range(t.name)
                one = rng.uniform(valid.low, valid.high, dims).astype(np.float32)
            else:
                file = spec.input_data_file
                raw = files.get(file)
                want = 4 * int(np.prod(dims, dtype=np.int64))
                shown = f"{m.name}/{WARMUP_DIR}/{file}"
                if raw is None or len(raw) != want:
                    got = "no file" if raw is None else f"{len(raw)} bytes"
                    raise ModelError(
                        f"{where}: {label}: input {t.name!r}: {shown} holds {got}; FP32 "
                        f"{list(dims)} is {want} bytes (little-endian, row-major)"
                    )
                one = np.frombuffer(raw, "<f4").reshape(dims).astype(np.float32)
                if not np.isfinite(one).all():
                    raise ModelError(
                        f"{where}: {label}: input {t.name!r}: {shown} holds values that are "
                        "not finite"
                    )
            # A batching model: batch_size copies of the sample; otherwise its rows as given.
            batching = m.scheduling.batching
            feeds[t.name] = np.repeat(one[None], sample.batch_size, 0) if batching else one
        yield label, feeds, max(sample.count, 1)  # one sample's arrays at a time
