"""The model repository: one onnxruntime session per model (highest version), its metadata and
signature checked against its task, warmed up, with the execution provider actually in use.

Layout (Triton's): <repo>/<name>/config.pbtxt and <repo>/<name>/<version>/model.onnx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import RepositoryError
from service.settings import Settings

log = logging.getLogger("coordconv.registry")

CANVAS = 64
TASKS = ("pixel", "render", "locate")
# task -> ((input name, shape without batch), (output name, shape without batch))
SIGNATURES: dict[str, tuple[tuple[str, tuple[int, ...]], tuple[str, tuple[int, ...]]]] = {
    "pixel": (("coords", (2,)), ("heatmap", (CANVAS, CANVAS))),
    "render": (("coords", (2,)), ("image", (CANVAS, CANVAS))),
    "locate": (("image", (CANVAS, CANVAS)), ("coords", (2,))),
}
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_WARNING = 2
ORT_FATAL = 4


@dataclass
class Model:
    """A loaded model. `run` is thread-safe (onnxruntime sessions are)."""

    name: str
    version: str
    task: str
    path: Path
    sha256: str
    session: ort.InferenceSession
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    provider: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        try:
            value = json.loads(self.metadata.get("coordconv.metrics", "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def arch(self) -> str:
        return self.metadata.get("coordconv.arch", "unknown")

    def run(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([self.output_name], {self.input_name: batch})[0]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "arch": self.arch,
            "split": self.metadata.get("coordconv.split"),
            "sha256": self.sha256,
            "provider": self.provider,
            "inputs": [
                {"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.input_shape]}
            ],
            "outputs": [
                {"name": self.output_name, "datatype": "FP32", "shape": [-1, *self.output_shape]}
            ],
            "metrics": self.metrics,
            "trained_at": self.metadata.get("coordconv.trained_at"),
        }


def session_options(settings: Settings) -> ort.SessionOptions:
    """Chosen deliberately: intra-op threads from settings (0 lets onnxruntime use one per
    physical core); one inter-op thread (the graphs are sequential chains); no spinning, because
    the batcher leaves gaps between calls in which spinning threads would steal the CPU from the
    event loop that parses requests; full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_models(repo: Path) -> list[tuple[str, str, Path]]:
    """(name, highest version, path) for every model in the repository."""
    if not repo.exists():
        raise RepositoryError(f"model repository {repo} does not exist")
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory")
    try:
        entries = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise RepositoryError(f"model repository {repo} is not readable") from None
    found = []
    for model_dir in entries:
        try:
            versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        except PermissionError:
            raise RepositoryError(f"model directory {model_dir} is not readable") from None
        if not versions:
            raise RepositoryError(f"model {model_dir}: no numbered version directory (e.g. 1/)")
        latest = max(versions, key=lambda p: int(p.name))
        onnx_path = latest / "model.onnx"
        if not onnx_path.is_file():
            raise RepositoryError(f"model {model_dir.name}: {onnx_path} is missing")
        if not os.access(onnx_path, os.R_OK):
            raise RepositoryError(f"model {model_dir.name}: {onnx_path} is not readable")
        found.append((model_dir.name, latest.name, onnx_path))
    if not found:
        raise RepositoryError(
            f"model repository {repo} holds no models (expected <name>/<n>/model.onnx)"
        )
    return found


def _dims(value: Any) -> list[Any]:
    return list(value.shape)


def _check_signature(name: str, path: Path, session: ort.InferenceSession, task: str) -> None:
    (in_name, in_shape), (out_name, out_shape) = SIGNATURES[task]
    inputs, outputs = session.get_inputs(), session.get_outputs()
    for kind, values, want_name, want_shape in (
        ("input", inputs, in_name, in_shape),
        ("output", outputs, out_name, out_shape),
    ):
        if len(values) != 1:
            raise RepositoryError(
                f"model {name} ({path}): expected one {kind}, found {len(values)}"
            )
        v = values[0]
        dims = _dims(v)
        ok = (
            v.name == want_name
            and v.type == "tensor(float)"
            and len(dims) == len(want_shape) + 1
            and not isinstance(dims[0], int)
            and tuple(dims[1:]) == want_shape
        )
        if not ok:
            raise RepositoryError(
                f"model {name} ({path}): {kind} is {v.name!r} {v.type} {dims}, but task {task!r} "
                f"needs {want_name!r} tensor(float) ['batch', {', '.join(map(str, want_shape))}]"
            )


class Registry:
    """Every model of the repository, loaded and warmed. Raises RepositoryError on any problem."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, Model] = {}
        self.cuda_error: str | None = None

    def load(self) -> None:
        s = self.settings
        found = find_models(Path(s.model_dir))
        wanted = [PROVIDERS[p] for p in s.provider_list]
        providers = self._usable_providers(wanted, found[0][2])
        for name, version, path in found:
            self.models[name] = self._open(name, version, path, providers)
        self.warm_up()
        in_use = sorted({m.provider for m in self.models.values()})
        log.info(
            "loaded %d models from %s on %s: %s",
            len(self.models),
            s.model_dir,
            ", ".join(in_use),
            ", ".join(f"{m.name}:{m.version}" for m in self.models.values()),
        )

    def _usable_providers(self, wanted: list[str], probe_model: Path) -> list[str]:
        """Drop GPU providers that cannot load here, with one clear log line instead of
        onnxruntime's library errors for every session."""
        gpu = [p for p in wanted if p != "CPUExecutionProvider"]
        if not gpu:
            return wanted
        ort.set_default_logger_severity(ORT_FATAL)  # silence the probe's library errors
        try:
            probe = ort.InferenceSession(str(probe_model), providers=wanted)
            active = probe.get_providers()
        except Exception as exc:  # a corrupt probe model is reported by _open
            log.debug("provider probe failed: %s", exc)
            active = ["CPUExecutionProvider"]
        finally:
            ort.set_default_logger_severity(ORT_WARNING)
        usable = [p for p in wanted if p in active]
        missing = [p for p in gpu if p not in active]
        if missing:
            self.cuda_error = (
                f"{', '.join(missing)} unavailable (no GPU, or its CUDA/cuDNN libraries are "
                f"missing; onnxruntime {ort.__version__})"
            )
            if self.settings.require_gpu:
                raise RepositoryError(f"REQUIRE_GPU is set but {self.cuda_error}")
            log.warning("%s: serving on CPU", self.cuda_error)
        if not usable:
            usable = ["CPUExecutionProvider"]
        return usable

    def _open(self, name: str, version: str, path: Path, providers: list[str]) -> Model:
        try:
            session = ort.InferenceSession(
                str(path), session_options(self.settings), providers=providers
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RepositoryError(f"model {name}: cannot load {path}: {first[:300]}") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        task = meta.get("coordconv.task")
        if task not in TASKS:
            raise RepositoryError(
                f"model {name} ({path}): metadata coordconv.task is {task!r}; expected one of "
                f"{', '.join(TASKS)}"
            )
        _check_signature(name, path, session, task)
        (in_name, in_shape), (out_name, out_shape) = SIGNATURES[task]
        provider = session.get_providers()[0]
        if self.settings.require_gpu and provider != "CUDAExecutionProvider":
            raise RepositoryError(f"REQUIRE_GPU is set but model {name} runs on {provider}")
        return Model(
            name=name,
            version=version,
            task=task,
            path=path,
            sha256=_sha256(path),
            session=session,
            input_name=in_name,
            input_shape=in_shape,
            output_name=out_name,
            output_shape=out_shape,
            provider=provider,
            metadata=meta,
        )

    def warm_up(self) -> None:
        """Run each model at a few batch sizes so the first requests do not pay for allocation."""
        for m in self.models.values():
            for n in sorted({1, self.settings.max_batch_size}):
                x = np.zeros((n, *m.input_shape), dtype=np.float32)
                if m.task != "locate":
                    x += CANVAS / 2
                out = m.run(x)
                if out.shape != (n, *m.output_shape) or not np.isfinite(out).all():
                    raise RepositoryError(f"model {m.name} ({m.path}): warm-up gave bad output")

    def get(self, name: str) -> Model | None:
        return self.models.get(name)
