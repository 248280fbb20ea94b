"""benchmarks/gpu.py (`make gpu-check`) in pieces, small and fast, on the CPU provider: CI proves
the script that a lent GPU machine will run. The same checks on CUDA are marked `gpu`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from benchmarks import gpu

CPU = "CPUExecutionProvider"


def check(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the module's main into tmp_path; the results file it wrote, which must be the only
    one, with its .md beside it."""
    assert gpu.main([*args, "--out-dir", str(tmp_path)]) == 0
    (js,) = tmp_path.glob("gpu-*.json")
    assert js.with_suffix(".md").is_file()
    return dict(json.loads(js.read_text()))


def test_parity_and_raw_onnxruntime_on_one_model(tmp_path: Path) -> None:
    r = check(
        tmp_path,
        "--providers=cpu",
        "--sections=environment,parity,onnxruntime",
        "--parity-models=render/2,pixel-baseline",
        "--raw-models=render",
        "--batches=1,16",
        "--ort-seconds=0.05",
    )
    assert (tmp_path / "gpu-cpu.json").is_file()
    assert r["found_provider"] == CPU
    env = r["environment"]
    assert env["onnxruntime"]["version"] == ort.__version__
    assert env["probe"]["session_providers"] == [CPU]
    assert env["cpu_count"] >= 1 and env["cpu_model"]
    # Over the full canvas, on CPU against CPU: no difference, and the task metrics say what the
    # models are (render v2 is the full-canvas model; the baseline misses most pixels).
    rows = r["parity"]["models"]
    assert set(rows) == {"render/2", "pixel-baseline/1"}
    for row in rows.values():
        assert row["providers"] == [CPU] and row["cpu_providers"] == [CPU]
        assert row["items"] == 64 * 64
        assert max(row["max_abs_diff"].values()) == 0.0
        assert row["found"] == row["cpu"]
    assert rows["render/2"]["min_iou_vs_cpu"] == 1.0
    assert rows["render/2"]["found"]["mean_iou"] > 0.99
    assert rows["pixel-baseline/1"]["argmax_agreement"] == 1.0
    assert 0 < rows["pixel-baseline/1"]["found"]["accuracy"] < 0.9
    raw = r["onnxruntime"]["models"]["render"]
    assert raw["providers"] == [CPU] and raw["version"] == "2"
    assert r["onnxruntime"]["device_for_outputs"] == "cpu"
    for mode in ("run", "iobinding"):
        assert set(raw[mode]) == {"1", "16"}
        assert all(v > 0 for v in raw[mode].values())
    md = (tmp_path / "gpu-cpu.md").read_text()
    assert "| render/2 | render | 4096 | CPUExecutionProvider | 0 |" in md
    assert "| pixel-baseline/1 | pixel | 4096 |" in md
    assert "| render v2 | iobinding |" in md
    assert set(r["section_seconds"]) == {"environment", "parity", "onnxruntime"}


def test_image_models_are_checked_on_squares_and_one_hots(tmp_path: Path) -> None:
    r = check(tmp_path, "--providers=cpu", "--sections=parity", "--parity-models=locate-baseline")
    (row,) = r["parity"]["models"].values()
    assert row["task"] == "locate" and row["items"] == 2 * 64 * 64
    assert row["max_coords_diff_px"] == 0.0
    assert row["found"]["squares_mean_error_px"] >= 0 and row["found"]["onehots_max_error_px"] > 0


def test_service_section_against_a_real_server(tmp_path: Path) -> None:
    r = check(
        tmp_path,
        "--providers=cpu",
        "--sections=service",
        "--workers=1",
        "--service-models=render",
        "--items=1",
        "--clients=4",
        "--seconds=0.5",
        "--warmup-seconds=0.2",
        "--ort-seconds=0.05",
    )
    svc = r["service"]
    (run,) = svc["runs"]
    assert "error" not in run and run["workers_serving"] == 1
    assert run["providers"]["render/2"] == CPU
    (p,) = run["points"]
    assert p["errors"] == 0 and p["requests"] > 0
    assert p["items_per_s"] > 0 and p["p99_ms"] >= p["p50_ms"] > 0
    # The batch the server formed, from its histogram, and raw onnxruntime at that batch.
    assert 1 <= p["mean_batch"] <= 4
    assert p["raw_batch"] == max(1, round(p["mean_batch"]))
    assert p["raw_items_per_s"] > 0 and p["ratio_to_raw"] > 0
    t = p["time"]
    assert t["compute_ms"] > 0 and t["queue_ms"] >= 0
    assert t["client_mean_ms"] >= t["queue_ms"] + t["compute_ms"]
    assert svc["best"]["render, 1 items/request"]["time"] == t
    assert svc["settings"]["request_timeout_s"] == gpu.TIMEOUT_S
    md = (tmp_path / "gpu-cpu.md").read_text()
    assert "Where the time goes, render, 1 items/request at its best (1 workers, 4 clients" in md


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    report: dict[str, Any] = {"section_seconds": {}}
    written: list[set[str]] = []

    def broken() -> None:
        raise RuntimeError("libcudnn.so.9: cannot open shared object file")

    gpu.run_sections(
        report,
        [("parity", broken), ("onnxruntime", lambda: {"models": {}, "device_for_outputs": "cpu"})],
        lambda: written.append(set(report)),
    )
    assert (
        report["parity"]["error"] == "RuntimeError: libcudnn.so.9: cannot open shared object file"
    )
    assert any("broken" in line for line in report["parity"]["traceback"])
    assert report["onnxruntime"] == {"models": {}, "device_for_outputs": "cpu"}
    # Written after each section: a run cut short keeps what it measured.
    assert written == [{"section_seconds", "parity"}, {"section_seconds", "parity", "onnxruntime"}]
    assert "section **parity failed**: RuntimeError" in gpu.markdown(
        {"found_provider": CPU, "command": "x", "date": "today", **report}
    )


def test_time_running_out_is_recorded_in_the_section_it_stopped() -> None:
    report: dict[str, Any] = {"section_seconds": {}}
    written: list[dict[str, Any]] = []

    def interrupted() -> None:
        raise KeyboardInterrupt  # what `timeout -s INT` delivers

    with pytest.raises(KeyboardInterrupt):
        gpu.run_sections(
            report,
            [("service", interrupted), ("never", dict)],
            lambda: written.append(dict(report)),
        )
    assert written[-1]["service"] == {"error": "interrupted: the run's time ran out here"}
    assert "never" not in report


def test_a_rerun_keeps_what_the_run_before_measured(tmp_path: Path) -> None:
    first = check(tmp_path, "--providers=cpu", "--sections=environment")
    again = check(
        tmp_path,
        "--providers=cpu",
        "--sections=onnxruntime",
        "--keep",
        "--raw-models=pixel",
        "--batches=4",
        "--ort-seconds=0.02",
    )
    assert again["environment"] == first["environment"]
    assert again["onnxruntime"]["models"]["pixel"]["run"]["4"] > 0
    assert again["kept"] == {
        "sections": ["environment"],
        "command": first["command"],
        "date": first["date"],
    }
    assert "Sections environment are from the run before" in (tmp_path / "gpu-cpu.md").read_text()


def test_without_onnxruntime_the_file_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, Any]:
        raise ImportError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(gpu, "load_libraries", broken)
    assert gpu.main(["--out-dir", str(tmp_path)]) == 1
    written = json.loads((tmp_path / "gpu-none.json").read_text())
    assert written["error"] == (
        "import onnxruntime: ImportError: libcudart.so.13: cannot open shared object file"
    )


def test_a_failing_probe_falls_back_to_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(wanted: list[str]) -> tuple[str, dict[str, Any]]:
        raise RuntimeError("CUDA failure 999: unknown error")

    monkeypatch.setattr(gpu, "found_provider", broken)
    r = check(tmp_path, "--sections=environment")
    assert r["found_provider"] == CPU
    assert r["environment"]["probe"]["error"] == "RuntimeError: CUDA failure 999: unknown error"


def test_nvidia_library_folders_are_found_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CUDA 13's consolidated wheel (nvidia/cu13/lib) and cuDNN's own (nvidia/cudnn/lib).
    for lib in ("cu13/lib/libcublasLt.so.13", "cudnn/lib/libcudnn.so.9", "cu13/include/x.h"):
        (tmp_path / "nvidia" / lib).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "nvidia" / lib).write_bytes(b"")
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    assert gpu.nvidia_lib_dirs() == [
        str(tmp_path / "nvidia" / "cu13" / "lib"),
        str(tmp_path / "nvidia" / "cudnn" / "lib"),
    ]


@pytest.mark.gpu
def test_cuda_is_found_and_agrees_with_the_cpu(tmp_path: Path) -> None:
    r = check(
        tmp_path,
        "--sections=parity,onnxruntime",
        "--parity-models=render,locate",
        "--raw-models=render",
        "--batches=64",
        "--ort-seconds=0.2",
    )
    assert r["found_provider"] == "CUDAExecutionProvider"
    assert (tmp_path / "gpu-cuda.json").is_file()
    rows = r["parity"]["models"]
    for key in ("render/2", "locate/2"):
        assert rows[key]["providers"][0] == "CUDAExecutionProvider"
    assert rows["render/2"]["min_iou_vs_cpu"] > 0.99
    assert rows["locate/2"]["max_coords_diff_px"] < 0.05
    assert r["onnxruntime"]["device_for_outputs"] == "cuda"
    assert r["onnxruntime"]["models"]["render"]["iobinding"]["64"] > 0
