"""ONNX export: files, Triton config, metadata, verification and its refusals."""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest

from coordconv.contract import config_pbtxt
from tests.helpers import MODELS
from training.export import ExportError, export_run, verify_onnx


@pytest.fixture(scope="module")
def runs(untrained_run):
    """Untrained (0-epoch) runs of pixel and locate, the session's (tests/conftest.py)."""
    untrained_run("locate")
    return untrained_run("pixel").parent


def fewer_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every eighth sample for the verifications a test is not about: an export verifies every
    sample against PyTorch (the costliest step of these tests), which the pixel export checks."""
    import training.export as export

    whole = export.sample_inputs
    monkeypatch.setattr(export, "sample_inputs", lambda task, full=False: whole(task, full)[::8])


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """One repository with each run exported once (pixel as version 3, verified on every sample;
    locate as version 1, on every eighth), and what each export returned: the tests read it, or
    copy what they change."""
    repo = tmp_path_factory.mktemp("exported")
    infos = {"pixel": export_run(runs / "pixel", "pixel", repo=repo, version=3)}
    with pytest.MonkeyPatch.context() as mp:
        fewer_samples(mp)
        infos["locate"] = export_run(runs / "locate", "locate", repo=repo, version=1)
    return repo, infos


def test_export_writes_a_verified_model_and_config(runs, exported, tmp_path, monkeypatch) -> None:
    repo, infos = exported
    info = infos["pixel"]
    path = repo / "pixel" / "3" / "model.onnx"
    assert info["path"] == str(path) and path.is_file()
    assert info["max_abs_diff"] <= 1e-4 and info["samples_at"] == {1: 64, 257: 3136}
    assert path.stat().st_size < 200_000
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["coordconv.task"] == "pixel" and meta["coordconv.arch"] == "coordconv"
    assert meta["coordconv.canvas"] == "64" and meta["coordconv.split"] == "quadrant"
    assert "accuracy" in json.loads(meta["coordconv.metrics"])
    assert meta["coordconv.trained_at"].endswith("Z")
    assert proto.opset_import[0].version == 18 and proto.ir_version == 9
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    config = (repo / "pixel" / "config.pbtxt").read_text()
    assert 'name: "pixel"' in config and "dynamic_batching" in config
    # Without --version the next export goes one above the highest.
    shutil.copytree(repo / "pixel", tmp_path / "pixel")
    fewer_samples(monkeypatch)
    again = export_run(runs / "pixel", "pixel", repo=tmp_path)
    assert again["path"].endswith("/4/model.onnx")


def test_a_corrupt_file_is_refused_naming_the_file(tmp_path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match=re.escape(f"{bad}: not a valid ONNX model")):
        verify_onnx(bad, "pixel")


def test_a_model_of_another_task_is_refused_naming_the_mismatch(exported) -> None:
    path = exported[0] / "locate" / "1" / "model.onnx"
    with pytest.raises(ExportError, match=r"input is named 'image', expected 'coords'"):
        verify_onnx(path, "render")


def test_a_model_that_disagrees_with_pytorch_is_refused(exported, monkeypatch) -> None:
    fewer_samples(monkeypatch)
    path = exported[0] / "locate" / "1" / "model.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(path, "locate", reference=lambda x: verify_shift(x))


def test_a_reference_with_other_rows_than_the_samples_is_refused(exported, monkeypatch) -> None:
    import numpy as np

    fewer_samples(monkeypatch)
    path = exported[0] / "locate" / "1" / "model.onnx"
    with pytest.raises(ExportError, match=r"the reference gave \[3\] rows for 784 samples"):
        verify_onnx(path, "locate", reference=lambda x: np.zeros((3, 2), np.float32))


def verify_shift(x):
    import numpy as np

    return np.full((len(x), 2), 31.5, dtype=np.float32)


def test_bad_names_and_missing_runs_are_refused(runs, tmp_path) -> None:
    with pytest.raises(ExportError, match="invalid model name"):
        export_run(runs / "pixel", "../escape", repo=tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        export_run(missing, "pixel", repo=tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(runs / "pixel", partial)
    (partial / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt is missing"):
        export_run(partial, "pixel", repo=tmp_path)


def test_triton_config_leaves_the_batch_axis_out() -> None:
    text = config_pbtxt("render", "render")
    assert 'name: "coords"' in text and "dims: [ 2 ]" in text
    assert 'name: "image"' in text and "dims: [ 64, 64 ]" in text


def test_exported_configs_pass_the_services_own_check(exported) -> None:
    """`coordconv export` writes what `coordconv serve` accepts: the config parses as Triton's
    ModelConfig and agrees with the graph (the service's verification, strict)."""
    from service.dataplane.tasks import CoordConvRules
    from service.models import config as model_config
    from service.models.version import open_version
    from service.settings import Settings

    repo, _ = exported
    for task, version in (("pixel", 3), ("locate", 1)):
        config = model_config.from_text(
            (repo / task / "config.pbtxt").read_text(), task, strict=True
        )
        m = open_version(
            task,
            version,
            repo / task / str(version) / "model.onnx",
            config,
            Settings(model_dir=repo),
            ["CPUExecutionProvider"],
            rules=CoordConvRules(),
        )
        assert m.task == task and m.scheduling.max_batch_size == 64


def test_a_failed_export_leaves_no_version_directory(runs, tmp_path, monkeypatch) -> None:
    import training.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.raises(ExportError, match="ONNX export failed: exporter crashed"):
        export_run(runs / "pixel", "pixel", repo=tmp_path, version=2)
    assert sorted(p.name for p in (tmp_path / "pixel").iterdir()) == []


# The quality gate that sees the whole image: IoU at threshold 0.5 gives 1.000 to a model that
# paints the true square and a grey wash everywhere else.


def grey_wash_onnx(path, background: float = 0.33) -> None:
    """A render graph that paints the true 9x9 square (1.0) over a `background` grey: IoU 1.000."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    cols = np.tile(np.arange(64, dtype=np.float32), (64, 1))[None]  # [1, 64, 64]: x
    consts: dict[str, np.ndarray] = {
        "cols": cols,
        "rows": cols.transpose(0, 2, 1).copy(),  # y
        "shape": np.array([-1, 1, 1], np.int64),
        "half": np.array(4.0, np.float32),
        "bright": np.array(1.0 - background, np.float32),
        "grey": np.array(background, np.float32),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "two": np.array([2], np.int64),
    }
    nodes = [
        helper.make_node("Slice", ["coords", "zero", "one", "one"], ["x"]),
        helper.make_node("Slice", ["coords", "one", "two", "one"], ["y"]),
    ]
    for axis, grid in (("x", "cols"), ("y", "rows")):
        nodes += [
            helper.make_node("Round", [axis], [f"{axis}r"]),
            helper.make_node("Reshape", [f"{axis}r", "shape"], [f"{axis}3"]),
            helper.make_node("Sub", [grid, f"{axis}3"], [f"{axis}d"]),
            helper.make_node("Abs", [f"{axis}d"], [f"{axis}a"]),
            helper.make_node("LessOrEqual", [f"{axis}a", "half"], [f"{axis}in"]),
        ]
    nodes += [
        helper.make_node("And", ["xin", "yin"], ["inside"]),
        helper.make_node("Cast", ["inside"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mask", "bright"], ["painted"]),
        helper.make_node("Add", ["painted", "grey"], ["image"]),
    ]
    graph = helper.make_graph(
        nodes,
        "grey_wash",
        [helper.make_tensor_value_info("coords", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 64, 64])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save_model(model, str(path))


def test_a_grey_background_render_model_is_refused_though_its_iou_is_1(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    grey_wash_onnx(path)
    with pytest.raises(ExportError) as info:
        verify_onnx(path, "render", label="render/3")
    assert str(info.value) == (
        "render/3 refused: background mean 0.33 > 0.05 (IoU 1.000 at 0.5 hides it)"
    )
    # The same square on a dark background passes.
    grey_wash_onnx(path, background=0.0)
    summary = verify_onnx(path, "render")
    assert summary["iou"] == 1.0 and summary["background_mean"] == 0.0


# The CoordConv render models meet the goal's value bounds, stricter than this gate, where their
# IoU is judged (tests/training/test_shipped_models.py, tests/service/test_full_canvas.py).
@pytest.mark.parametrize("path", sorted(MODELS.glob("render-baseline/*/model.onnx")), ids=str)
def test_the_shipped_render_baseline_passes_the_export_gate(path) -> None:
    """The baseline misses squares (the poor model it is) and is still exported: its background
    is dark."""
    from training import metrics

    summary = verify_onnx(path, "render")
    assert summary["background_mean"] <= metrics.BACKGROUND_MEAN_MAX
    assert metrics.render_value_problem(summary, summary["iou"], square=False) is None


@pytest.fixture(scope="module")
def grey_run(untrained_run, tmp_path_factory):
    """A render run folder whose model is the shipped render/1 with its last layer flattened:
    every square still above 0.5 and every background pixel below (IoU 1.000 on all 3136
    centres), but a background of about 0.24."""
    import torch

    from training.onnx_weights import weights_from_onnx

    run = tmp_path_factory.mktemp("grey") / "render-grey"
    shutil.copytree(untrained_run("render"), run)
    state = weights_from_onnx(MODELS / "render" / "1" / "model.onnx")
    state["paint.8.weight"] = state["paint.8.weight"] * 0.05
    state["paint.8.bias"] = state["paint.8.bias"] * 0.05 - 0.2
    torch.save(state, run / "model.pt")
    return run


def test_a_grey_background_run_misses_the_goal_saying_why(grey_run) -> None:
    from training.data import task_data
    from training.metrics import goal_met, goal_refused
    from training.train import evaluate, load_run

    model, _, _ = load_run(grey_run)
    d = task_data("render", "quadrant")
    m = evaluate("render", model, d.x_test, d.y_test, d.kinds_test)
    assert m["iou"] == 1.0 and m["background_mean"] > 0.2
    assert not goal_met("render", m)
    reason = goal_refused("render", m)
    assert reason is not None
    assert re.fullmatch(
        r"background mean 0\.2\d > 0\.05; square mean 0\.\d\d < 0\.95 "
        r"\(IoU 1\.000 at 0\.5 hides it\)",
        reason,
    )
    # A model IoU already fails is not "refused": the IoU says why.
    assert goal_refused("render", {**m, "iou": 0.5}) is None


def test_coordconv_export_refuses_a_grey_background_run_in_one_line(grey_run, tmp_path) -> None:
    import subprocess
    import sys

    repo = tmp_path / "models"
    shutil.copytree(MODELS / "render", repo / "render")
    before = sorted(p.name for p in (repo / "render").iterdir())
    args = ["export", str(grey_run), "--name", "render", "--repo", str(repo)]
    proc = subprocess.run(
        [sys.executable, "-m", "coordconv", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(
        r"coordconv: error: render/3 refused: background mean 0\.2\d > 0\.05 "
        r"\(IoU 1\.000 at 0\.5 hides it\)",
        lines[0],
    ), lines[0]
    assert sorted(p.name for p in (repo / "render").iterdir()) == before  # nothing published
