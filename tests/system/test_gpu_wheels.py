"""deploy/gpu/pack_wheels.sh and install_wheels.sh on a tiny wheel built here (no network, no
255 MB download): the parts join, every sha256 is checked, a damaged or missing part is refused
with one line before anything is installed, and the package imports from the --target folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "gpu" / "pack_wheels.sh"
INSTALL = ROOT / "deploy" / "gpu" / "install_wheels.sh"
PART_BYTES = 700  # several parts from a few kB


def tiny_wheel(folder: Path) -> Path:
    """A valid pure-Python wheel, `gpucheck_tiny` 0.1, whose module is big enough (incompressible
    bytes) to need several parts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpucheck_tiny-0.1-py3-none-any.whl"
    info = "gpucheck_tiny-0.1.dist-info"
    files = {
        "gpucheck_tiny/__init__.py": "VALUE = 41\n",
        "gpucheck_tiny/blob.bin": os.urandom(3000).hex(),
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheck-tiny\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in files.items():
            z.writestr(name, body)
        z.writestr(f"{info}/RECORD", record)
    return path


def run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable, "VENV_PY": sys.executable, **(env or {})},
    )


def pack(tmp_path: Path, codec: str = "xz") -> Path:
    tiny_wheel(tmp_path / "wheels")
    out = tmp_path / "parts"
    done = run(
        PACK,
        "--wheels",
        str(tmp_path / "wheels"),
        "--out",
        str(out),
        "--part-bytes",
        str(PART_BYTES),
        "--codec",
        codec,
    )
    assert done.returncode == 0, done.stderr
    return out


def manifest(parts: Path) -> list[list[str]]:
    lines = (parts / "MANIFEST").read_text().splitlines()
    return [line.split() for line in lines if not line.startswith("#")]


@pytest.mark.parametrize("codec", ["xz", "zstd"])
def test_packed_parts_join_install_and_import(tmp_path: Path, codec: str) -> None:
    if shutil.which(codec) is None:
        pytest.skip(f"{codec} is not installed here")
    parts = pack(tmp_path, codec)
    rows = manifest(parts)
    kinds = [r[0] for r in rows]
    assert kinds.count("archive") == 1 and kinds.count("wheel") == 1
    part_rows = [r for r in rows if r[0] == "part"]
    assert len(part_rows) >= 3
    for _, name, sha, size in part_rows:
        assert (parts / name).stat().st_size == int(size) <= PART_BYTES
        assert len(sha) == 64
    (archive,) = [r[1] for r in rows if r[0] == "archive"]
    assert archive.endswith(".xz" if codec == "xz" else ".zst")

    # A CUDA library package where the interpreter looks (as the GPU machine has them).
    fake = tmp_path / "sitepackages"
    (fake / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    (fake / "nvidia" / "cu13" / "lib" / "libcudart.so.13").write_bytes(b"")
    target = tmp_path / "site"
    done = run(
        INSTALL, "--parts", str(parts), "--target", str(target), env={"PYTHONPATH": str(fake)}
    )
    assert done.returncode == 0, done.stderr
    assert "install_wheels: 1 wheels into" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    shown = subprocess.run(
        ["bash", "-c", last + '; echo "$PYTHONPATH|$LD_LIBRARY_PATH"'],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")},
    )
    assert shown.stdout.strip() == f"{target}|{fake}/nvidia/cu13/lib"
    assert (target / "env.sh").read_text().strip() == last  # for later calls there
    imported = subprocess.run(
        [sys.executable, "-c", "import gpucheck_tiny as t; print(t.VALUE, t.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
    )
    value, where = imported.stdout.split()
    assert value == "41" and Path(where).is_relative_to(target)


def test_a_damaged_part_is_refused_before_installing(tmp_path: Path) -> None:
    parts = pack(tmp_path)
    second = parts / [r for r in manifest(parts) if r[0] == "part"][1][1]
    data = bytearray(second.read_bytes())
    data[10] ^= 0xFF
    second.write_bytes(bytes(data))
    target = tmp_path / "site"
    done = run(INSTALL, "--parts", str(parts), "--target", str(target))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"install_wheels: part {second.name} has sha256 ")
    assert line.endswith("carry it again")
    assert not target.exists()


def test_a_missing_part_is_refused_before_installing(tmp_path: Path) -> None:
    parts = pack(tmp_path)
    last = parts / [r for r in manifest(parts) if r[0] == "part"][-1][1]
    last.unlink()
    done = run(INSTALL, "--parts", str(parts), "--target", str(tmp_path / "site"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"install_wheels: part {last.name} is missing from {parts}: carry it again"
    )
    assert not (tmp_path / "site").exists()


def test_without_an_xz_binary_python_decompresses(tmp_path: Path) -> None:
    """The GPU machine's image may lack xz: Python's lzma module stands in."""
    parts = pack(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "cut", "date", "mkdir", "mktemp", "rm", "sha256sum", "tar"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = run(
        INSTALL,
        "--parts",
        str(parts),
        "--target",
        str(tmp_path / "site"),
        env={"PATH": str(bin_dir)},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "gpucheck_tiny" / "__init__.py").read_text() == "VALUE = 41\n"


def test_without_pip_the_wheels_are_unpacked(tmp_path: Path) -> None:
    """An interpreter without pip (a bare image) still gets the packages."""
    parts = pack(tmp_path)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    target = tmp_path / "site"
    done = run(
        INSTALL,
        "--parts",
        str(parts),
        "--target",
        str(target),
        env={"PYTHON": str(bare / "bin" / "python")},
    )
    assert done.returncode == 0, done.stderr
    assert "no pip for" in done.stdout
    assert (target / "gpucheck_tiny" / "__init__.py").read_text() == "VALUE = 41\n"
    assert (target / "gpucheck_tiny-0.1.dist-info" / "METADATA").is_file()
