"""ONNX export: files, Triton config, metadata, verification and its refusals."""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest

from coordconv.contract import config_pbtxt
from training.export import ExportError, export_run, verify_onnx
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untrained (0-epoch) runs: export does not care how good a model is."""
    root = tmp_path_factory.mktemp("runs")
    for task in ("pixel", "locate"):
        train(TrainConfig(task=task, epochs=0, out=str(root / task), progress=False))
    return root


def test_export_writes_a_verified_model_and_config(runs, tmp_path) -> None:
    info = export_run(runs / "pixel", "pixel", repo=tmp_path, version=3)
    path = tmp_path / "pixel" / "3" / "model.onnx"
    assert info["path"] == str(path) and path.is_file()
    assert info["max_abs_diff"] <= 1e-4 and info["batch_sizes"] == [1, 257]
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
    config = (tmp_path / "pixel" / "config.pbtxt").read_text()
    assert 'name: "pixel"' in config and "dynamic_batching" in config
    # Without --version the next export goes one above the highest.
    again = export_run(runs / "pixel", "pixel", repo=tmp_path)
    assert again["path"].endswith("/4/model.onnx")


def test_a_corrupt_file_is_refused_naming_the_file(tmp_path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match=re.escape(f"{bad}: not a valid ONNX model")):
        verify_onnx(bad, "pixel")


def test_a_model_of_another_task_is_refused_naming_the_mismatch(runs, tmp_path) -> None:
    export_run(runs / "locate", "locate", repo=tmp_path, version=1)
    path = tmp_path / "locate" / "1" / "model.onnx"
    with pytest.raises(ExportError, match=r"input is named 'image', expected 'coords'"):
        verify_onnx(path, "render")


def test_a_model_that_disagrees_with_pytorch_is_refused(runs, tmp_path) -> None:
    export_run(runs / "locate", "locate", repo=tmp_path, version=1)
    path = tmp_path / "locate" / "1" / "model.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(path, "locate", reference=lambda x: verify_shift(x))


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


def test_exported_configs_pass_the_services_own_check(runs, tmp_path) -> None:
    """`coordconv export` writes what `coordconv serve` accepts: the config parses as Triton's
    ModelConfig and agrees with the graph (the service's verification, strict)."""
    from service.models import config as model_config
    from service.models.version import open_version
    from service.settings import Settings

    for task in ("pixel", "locate"):
        export_run(runs / task, task, repo=tmp_path, version=1)
        config = model_config.from_text(
            (tmp_path / task / "config.pbtxt").read_text(), task, strict=True
        )
        m = open_version(
            task,
            1,
            tmp_path / task / "1" / "model.onnx",
            config,
            Settings(model_dir=tmp_path),
            ["CPUExecutionProvider"],
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
