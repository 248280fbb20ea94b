"""ONNX export of a trained run into the model repository (Triton layout), and its verification.

    models/<name>/config.pbtxt          Triton configuration (platform onnxruntime_onnx)
    models/<name>/<version>/model.onnx  the graph: pixels in, probabilities or pixels out

Opset 18 with IR version 9: the lowest opset the dynamo exporter emits, loaded by every
onnxruntime since 1.14, which covers the onnxruntime backends of all Triton releases since 23.04.

Every export is verified before it is published (written to a temporary file first): the onnx
checker passes, the graph's names, types and dims are the task's signature in coordconv/contract.py
(the README's "Shipped models and ONNX" table) with a symbolic batch axis, onnxruntime matches
PyTorch on all 3136 samples at batch size 257 and on 64 of them, spread over the canvas, one at a
time (the symbolic batch axis at 1; every sample one at a time took a fifth to a third of a
pixel export, 28 CPU s against 20-24), and a render model's images are dark where
there is no square: a background mean above training.metrics.BACKGROUND_MEAN_MAX is refused,
whatever its IoU (a grey wash under the threshold scores IoU 1.000), on PyTorch's images before
the export (a refused run costs no export) and on onnxruntime's after it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coordconv import contract
from coordconv.contract import BATCH_DIM, MODEL_NAME_RE, SIGNATURES
from training import data, metrics
from training.cpu import keep_freed_memory, session
from training.nets import CoordNet, Task
from training.onnx_weights import weights_from_onnx
from training.serving import LocateWithConfidence, NearestCentre, RefinedLocate
from training.train import load_run

OPSET = 18
IR_VERSION = 9  # the IR of opset 18 (onnx 1.13): loadable by onnxruntime >= 1.14
# Items per onnxruntime call in config.pbtxt: on a CPU, batch 64 is as fast per item as 256
# (benchmarks/results.md) at a quarter of the latency.
MAX_BATCH_SIZE = 64
# Samples verified one at a time (batch size 1), spread evenly over the set; every other batch
# size is verified on every sample.
ONE_AT_A_TIME = 64


class ExportError(RuntimeError):
    """An export or a verification failed; the message names the file and the problem."""


class _Serving(nn.Module):
    """What gets exported: `predict`, the forward pass with its final softmax or sigmoid."""

    def __init__(self, model: CoordNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def sample_inputs(task: str, full: bool = False) -> np.ndarray:
    """Every input of the data set for a task: the 3136 centres (all 4096 for a full-canvas
    model), or their squares and one-hots."""
    c = data.full_centres() if full else data.centres()
    if task == "locate":
        return np.concatenate([data.squares(c), data.onehots(c)])
    return c


def output_names(model: CoordNet, task: str) -> list[str]:
    """The graph's outputs: the task's, plus `confidence` for a locate model that answers it."""
    names = [SIGNATURES[task].output.name]
    if isinstance(model, LocateWithConfidence):
        names += [t.name for t in SIGNATURES[task].optional_outputs]
    return names


def export_onnx(model: CoordNet, task: Task, path: str | Path, metadata: dict[str, str]) -> None:
    """Export `model.predict` to `path` with a symbolic batch axis and the given metadata."""
    import onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    sig = SIGNATURES[task]
    model = model.cpu().eval()
    example = torch.from_numpy(sample_inputs(task)[:2])
    batch = torch.export.Dim(BATCH_DIM, min=1, max=1 << 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            _Serving(model).eval(),
            (example,),
            input_names=[sig.input.name],
            output_names=output_names(model, task),
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    for value in (*proto.graph.input, *proto.graph.output):  # one readable name for the batch axis
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "coordconv"
    proto.ir_version = IR_VERSION
    onnx.save_model(proto, str(path))


def verify_onnx(
    path: str | Path,
    task: str,
    reference: Callable[[np.ndarray], Any] | None = None,
    batch_sizes: tuple[int, ...] = (1, 257),
    full: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Check an ONNX file against its task's contract, and against `reference` (PyTorch's
    outputs: one array, or one per output) on every sample at each batch size (at batch size 1
    on ONE_AT_A_TIME samples spread over the set); a render model's
    images also against the true squares (`render_values`). Raises ExportError naming the file
    (or `label`, e.g. "render/3") and what is wrong; returns a summary (max abs diff, batch
    sizes, and for render the value checks)."""
    import onnx

    path = Path(path)
    if task not in SIGNATURES:
        raise ExportError(f"{path}: unknown task {task!r}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: not a valid ONNX model: {exc}") from None
    sig = SIGNATURES[task]
    _check_value(path, "input", proto.graph.input[:1], sig.input.name, sig.input.dims)
    _check_value(path, "output", proto.graph.output[:1], sig.output.name, sig.output.dims)
    extra = list(proto.graph.output[1:])
    allowed = {t.name: t for t in sig.optional_outputs}
    if len(extra) > len(allowed) or any(o.name not in allowed for o in extra):
        raise ExportError(f"{path}: unexpected outputs {[o.name for o in extra]}")
    for o in extra:
        _check_value(path, "output", [o], o.name, allowed[o.name].dims)
    names = [sig.output.name, *(o.name for o in extra)]

    check = session(path)
    x = sample_inputs(task, full)
    spread = np.unique(np.linspace(0, len(x) - 1, min(ONE_AT_A_TIME, len(x))).astype(int))
    every = np.arange(len(x))  # batch size 1 alone (no larger one) still sees every sample
    which = {bs: spread if bs == 1 < max(batch_sizes) else every for bs in batch_sizes}
    summary: dict[str, Any] = {
        "samples": len(x),
        "batch_sizes": list(batch_sizes),
        "samples_at": {bs: len(which[bs]) for bs in batch_sizes},
    }
    passes: dict[int, list[Any]] = {}  # batch size -> its runs: each pass is made once

    def run_at(bs: int) -> list[Any]:
        if bs not in passes:
            xs = x[which[bs]]
            passes[bs] = [
                check.run(names, {sig.input.name: xs[i : i + bs]}) for i in range(0, len(xs), bs)
            ]
        return passes[bs]

    if task == "render":  # first: one pass, and a refused model need not be compared further
        images = np.concatenate([r[0] for r in run_at(max(batch_sizes))])
        summary.update(_check_render_values(images, x, label or str(path)))
    if reference is None:
        return summary
    ref = reference(x)
    references = list(ref) if isinstance(ref, tuple | list) else [ref]
    if any(len(r) != len(x) for r in references):  # compared row by row below
        raise ExportError(
            f"{path}: the reference gave {[len(r) for r in references]} rows for {len(x)} samples"
        )
    worst = 0.0
    for bs in batch_sizes:
        runs, rows = run_at(bs), which[bs]
        for k in range(1, len(names)):  # the extra outputs (the confidence)
            extra_got = np.concatenate([r[k] for r in runs])
            extra_diff = float(np.max(np.abs(extra_got - references[k][rows])))
            if not extra_diff <= 1e-3:
                raise ExportError(
                    f"{path}: output {names[k]!r} differs from PyTorch by {extra_diff:.3g}"
                )
        got = np.concatenate([r[0] for r in runs])
        expected = references[0][rows]
        if got.shape != expected.shape:
            raise ExportError(
                f"{path}: onnxruntime output shape {got.shape} != PyTorch's {expected.shape}"
            )
        diff = float(np.max(np.abs(got - expected)))
        worst = max(worst, diff)
        tolerance = 5e-4 if task == "locate" else 1e-4  # pixels up to 63 vs probabilities
        if not diff <= tolerance:
            raise ExportError(
                f"{path}: onnxruntime differs from PyTorch by {diff:.3g} (> {tolerance:g}) at "
                f"batch {bs}"
            )
        if task == "pixel":
            same = np.array_equal(
                got.reshape(len(rows), -1).argmax(1), expected.reshape(len(rows), -1).argmax(1)
            )
        elif task == "render":
            same = np.array_equal(got > 0.5, expected > 0.5)
        else:
            same = True
        if not same:
            raise ExportError(
                f"{path}: argmax or thresholded masks differ from PyTorch at batch {bs}"
            )
    summary["max_abs_diff"] = worst
    return summary


def _check_render_values(images: np.ndarray, coords: np.ndarray, label: str) -> dict[str, float]:
    """The rendered images of every sample against the true squares: refuses a background that
    is not dark (training.metrics.render_value_problem, the background bound only: a baseline
    that misses squares is still exported, as the poor model it is); returns the values and the
    IoU."""
    truth = data.squares(coords)
    values = metrics.render_values(images, truth)
    iou = metrics.mean_iou(images, truth)
    problem = metrics.render_value_problem(values, iou, square=False)
    if problem:
        raise ExportError(f"{label} refused: {problem}")
    return {"iou": iou, **values}


def _check_value(path: Path, kind: str, values: Any, name: str, shape: tuple[int, ...]) -> None:
    from onnx import TensorProto

    if len(values) != 1:
        raise ExportError(f"{path}: expected one {kind}, found {len(values)}")
    value = values[0]
    if value.name != name:
        raise ExportError(f"{path}: {kind} is named {value.name!r}, expected {name!r}")
    tt = value.type.tensor_type
    if tt.elem_type != TensorProto.FLOAT:
        raise ExportError(f"{path}: {kind} {name!r} is not FP32 (elem_type {tt.elem_type})")
    dims = tt.shape.dim
    got = ["?" if d.dim_param or not d.HasField("dim_value") else d.dim_value for d in dims]
    want = ["batch", *shape]
    if len(dims) != len(want) or not (dims[0].dim_param and not dims[0].HasField("dim_value")):
        raise ExportError(
            f"{path}: {kind} {name!r} has dims {got}, expected {want} (symbolic batch)"
        )
    if tuple(d.dim_value for d in dims[1:]) != shape:
        raise ExportError(f"{path}: {kind} {name!r} has dims {got}, expected {want}")


@torch.no_grad()
def reference_outputs(model: CoordNet, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """PyTorch's served outputs for `x`, one array per graph output."""
    model.eval()
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), batch):
        out = model.predict(torch.from_numpy(x[i : i + batch]))
        outs = out if isinstance(out, tuple) else (out,)
        parts.append([o.numpy() for o in outs])
    return [np.concatenate(cols) for cols in zip(*parts, strict=True)]


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_run(
    run_dir: str | Path, name: str, repo: str | Path = "models", version: int | None = None
) -> dict[str, Any]:
    """Export a run folder to `repo/name/version/model.onnx` (+ config.pbtxt).

    Nothing half-done ever appears in the repository, which a polling server may be watching:
    the version is built in a temporary directory beside it (a dot-name the server skips),
    verified against PyTorch, and only then renamed into place; config.pbtxt is replaced by a
    rename too. A failed export leaves the repository as it
    was."""
    if not MODEL_NAME_RE.match(name):
        raise ExportError(f"invalid model name {name!r}: use letters, digits, - _ .")
    keep_freed_memory()  # PyTorch's and onnxruntime's passes over every sample (training.cpu)
    model, cfg, run_metrics = load_run(run_dir)
    full = cfg.split == "full"
    if full and cfg.task == "locate":  # refined by a round trip, and with a confidence
        model = LocateWithConfidence(RefinedLocate(model)).eval()
    elif full:  # and full-canvas pixel and render models round real points to a centre
        model = NearestCentre(model).eval()
    model_dir = Path(repo) / name
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise ExportError(f"version must be >= 1, got {version}")
    target = model_dir / str(version)
    label = f"{name}/{version}"
    # PyTorch's outputs on every sample, once: the verification compares onnxruntime with them,
    # and a render model with a grey background is refused on them before anything is exported.
    x = sample_inputs(cfg.task, full)
    expected = reference_outputs(model, x)
    if cfg.task == "render":
        _check_render_values(expected[0], x, label)
    test_metrics = run_metrics["test"]
    if full and cfg.task == "locate":  # the served model refines the network: judge that
        truth = np.concatenate([data.full_centres()] * 2)
        err = np.linalg.norm(expected[0] - truth, axis=1)
        n = len(err) // 2
        test_metrics = {
            "mean_error_px": float(err.mean()),
            "mean_error_px_square": float(err[:n].mean()),
            "mean_error_px_onehot": float(err[n:].mean()),
            "max_error_px": float(err.max()),
        }
    metadata = {
        contract.META_TASK: cfg.task,
        contract.META_ARCH: cfg.arch,
        contract.META_CANVAS: str(data.CANVAS),
        contract.META_SPLIT: cfg.split,
        contract.META_METRICS: json.dumps(test_metrics, sort_keys=True),
        contract.META_TRAINED_AT: run_metrics["trained_at"],
        "coordconv.seed": str(cfg.seed),
        "coordconv.parameters": str(run_metrics["parameters"]),
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        version_dir = staging / str(version)
        version_dir.mkdir()
        onnx_path = version_dir / "model.onnx"
        try:
            export_onnx(model, cfg.task, onnx_path, metadata)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"{target}: ONNX export failed: {first[:400]}") from exc
        summary = verify_onnx(
            onnx_path,
            cfg.task,
            reference=lambda xs: (
                expected if np.array_equal(xs, x) else reference_outputs(model, xs)
            ),
            full=full,
            label=label,
        )
        # The service's own check of this config against the graph runs in the test suite
        # (tests/training/test_export.py, tests/training/test_shipped_models.py): training never
        # imports service.
        config_tmp = staging / "config.pbtxt"
        outputs = tuple(
            t
            for t in SIGNATURES[cfg.task].outputs + SIGNATURES[cfg.task].optional_outputs
            if t.name in output_names(model, cfg.task)
        )
        config_tmp.write_text(
            contract.config_pbtxt(name, cfg.task, MAX_BATCH_SIZE, outputs=outputs)
        )
        # Publish: the version directory first (complete), then the config beside it.
        if target.exists():
            shutil.rmtree(target)
        os.replace(version_dir, target)
        os.replace(config_tmp, model_dir / "config.pbtxt")
        final_onnx = target / "model.onnx"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "path": str(final_onnx),
        "config": str(model_dir / "config.pbtxt"),
        "bytes": final_onnx.stat().st_size,
        **summary,
    }


def add_confidence(path: str | Path) -> dict[str, Any]:
    """Give an exported CoordConv locate model (version 1: the paper's quadrant-split model) the
    `confidence` output of the full-canvas models, in place, weights and metadata unchanged.

    One config.pbtxt describes every version of a model (as in Triton), so versions served side
    by side must have the same outputs. The weights are read back from the ONNX file (their
    names are the PyTorch parameter names), the network is exported again with the confidence
    head, and the new file must answer the same coordinates as the old one on every sample
    before it replaces it."""
    import onnx

    from training.nets import CoordConvLocate

    path = Path(path)
    old = onnx.load(str(path))
    if any(o.name == "confidence" for o in old.graph.output):
        return {"path": str(path), "changed": False}
    meta = {p.key: p.value for p in old.metadata_props}
    if meta.get(contract.META_TASK) != "locate" or meta.get(contract.META_ARCH) != "coordconv":
        raise ExportError(f"{path}: not a CoordConv locate model")
    state = weights_from_onnx(path)
    net = CoordConvLocate()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"{path}: its weights do not fit CoordConvLocate: {exc}") from None
    model = LocateWithConfidence(net.eval()).eval()
    tmp = path.with_name(f".{path.name}.confidence")
    try:
        export_onnx(model, "locate", tmp, meta)
        summary = verify_onnx(tmp, "locate", reference=lambda x: reference_outputs(model, x))
        x = sample_inputs("locate")
        before, after = session(path), session(tmp)
        diff = float(
            np.abs(
                before.run(["coords"], {"image": x})[0] - after.run(["coords"], {"image": x})[0]
            ).max()
        )
        if diff > 1e-5:
            raise ExportError(f"{path}: the coordinates changed by {diff:.3g} (> 1e-5)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "changed": True, "coords_max_diff": diff, **summary}


def export_painted_render(
    pixel_run: str | Path, repo: str | Path = "models", version: int = 2
) -> dict[str, Any]:
    """The full-canvas `render` model: the full-canvas pixel run's network with the fixed
    painter (`PaintedPixel`), rounding real points to their nearest centre; verified like any
    export, and published the same way (a complete version directory renamed into place)."""
    from training.serving import PaintedPixel

    net, cfg, run_metrics = load_run(pixel_run)
    if cfg.task != "pixel" or cfg.split != "full":
        raise ExportError(
            f"{pixel_run}: not a full-canvas pixel run (task {cfg.task}, split {cfg.split})"
        )
    model = NearestCentre(PaintedPixel(net)).eval()
    c = data.full_centres()
    (images,) = reference_outputs(model, c)
    from training import metrics as m

    iou = m.iou(images, data.squares(c))
    metadata = {
        contract.META_TASK: "render",
        contract.META_ARCH: "coordconv",
        contract.META_CANVAS: str(data.CANVAS),
        contract.META_SPLIT: "full",
        contract.META_METRICS: json.dumps({"iou": float(iou.mean()), "min_iou": float(iou.min())}),
        contract.META_TRAINED_AT: run_metrics["trained_at"],
        "coordconv.seed": str(cfg.seed),
        "coordconv.parameters": str(run_metrics["parameters"]),
        "coordconv.painter": "fixed 9x9 max-pool of the pixel map (PaintedPixel)",
    }
    model_dir = Path(repo) / "render"
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        version_dir = staging / str(version)
        version_dir.mkdir()
        onnx_path = version_dir / "model.onnx"
        export_onnx(model, "render", onnx_path, metadata)
        summary = verify_onnx(
            onnx_path,
            "render",
            reference=lambda x: reference_outputs(model, x),
            full=True,
            label=f"render/{version}",
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(version_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = target / "model.onnx"
    return {
        "path": str(final),
        "bytes": final.stat().st_size,
        "min_iou": float(iou.min()),
        **summary,
    }
