"""Input files (coordinates as CSV or JSONL; images as a directory of PNGs or an .npy) and
crash-safe outputs.

Outputs are never half-written: a PNG is written to a temporary name and renamed; a single-file
output (.npy, .csv) is built from staged parts listed in a journal, and assembled (again to a
temporary name, then renamed) only once every item is done. A killed run leaves the staged parts
for `--resume`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from coordconv.contract import CANVAS
from coordconv.png import encode_png

# An item's id names a file (<id>.png): at most this many bytes, as most file systems allow.
MAX_ID_BYTES = 200


class InputError(Exception):
    """A bad input file; the message names the file and, where it can, the line."""


@dataclass
class Items:
    """What to send: item names in input order and their payloads (coords (N, 2), or images as
    an (N, 64, 64) array or a list of PNG paths)."""

    names: list[str]
    coords: np.ndarray | None = None
    images: np.ndarray | None = None
    pngs: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """A hash of exactly what will be sent, names included: a resumed job must be the same."""
        h = hashlib.sha256()
        h.update("\0".join(self.names).encode())
        if self.coords is not None:
            h.update(np.ascontiguousarray(self.coords, dtype=np.float32).tobytes())
        if self.images is not None:
            for start in range(0, len(self.images), 1024):
                h.update(np.ascontiguousarray(self.images[start : start + 1024]).tobytes())
        for png in self.pngs or ():
            h.update(hashlib.sha256(png.read_bytes()).digest())
        return h.hexdigest()


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{where}: {what} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or not 0 <= x <= CANVAS - 1:
        raise InputError(f"{where}: {what} = {value!r} is not in [0, {CANVAS - 1}]")
    return x


def read_coords(path: Path) -> Items:
    """CSV with a header holding x, y (and optionally id), or JSONL of {"x", "y", "id"?}."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    names: list[str] = []
    xy: list[tuple[float, float]] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is fine
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None

    def add(ident: Any, row: int, x: Any, y: Any, where: str) -> None:
        name = str(ident) if ident not in (None, "") else str(row)
        if (
            not name
            or "/" in name
            or "\\" in name
            or name in (".", "..")
            or any(ord(ch) < 32 for ch in name)
        ):
            raise InputError(f"{where}: id {name[:40]!r} cannot name a file")
        if len(name.encode()) > MAX_ID_BYTES:
            raise InputError(
                f"{where}: id {name[:40]!r}... is {len(name.encode())} bytes; at most "
                f"{MAX_ID_BYTES} (it names a file)"
            )
        if name in seen:
            raise InputError(f"{where}: duplicate id {name!r} (first at item {seen[name]})")
        seen[name] = row
        names.append(name)
        xy.append((_number(x, "x", where), _number(y, "y", where)))

    if path.suffix.lower() == ".jsonl":
        row = 0
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "x" not in obj or "y" not in obj:
                raise InputError(f'{where}: expected an object with "x" and "y"')
            add(obj.get("id"), row, obj["x"], obj["y"], where)
            row += 1
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip() for f in reader.fieldnames or []]
        if "x" not in fields or "y" not in fields:
            raise InputError(f"{path}:1: the header must name columns x and y, got {fields}")
        reader.fieldnames = fields
        for row, rec in enumerate(reader):
            where = f"{path}:{reader.line_num}"
            if None in rec or any(v is None for v in rec.values()):
                raise InputError(f"{where}: wrong number of columns")
            add(rec.get("id"), row, rec["x"].strip(), rec["y"].strip(), where)
    else:
        raise InputError(f"{path}: expected a .csv or .jsonl file")
    if not names:
        raise InputError(f"{path}: no items")
    return Items(names, coords=np.asarray(xy, dtype=np.float32).reshape(-1, 2))


def read_images(path: Path) -> Items:
    """Every *.png of a directory (sorted by name), or an (N, 64, 64) .npy."""
    if path.is_dir():
        pngs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        if not pngs:
            raise InputError(f"{path}: no .png files")
        for p in pngs:
            try:
                with Image.open(p) as im:
                    size = im.size
            except Exception:
                raise InputError(f"{p}: not a readable PNG") from None
            if size != (CANVAS, CANVAS):
                raise InputError(f"{p}: image is {size[0]}x{size[1]}, expected 64x64")
        return Items([p.stem for p in pngs], pngs=pngs)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix.lower() != ".npy":
        raise InputError(f"{path}: expected a directory of PNGs or an .npy file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy ({exc})") from None
    if arr.ndim != 3 or arr.shape[1:] != (CANVAS, CANVAS) or arr.dtype.kind != "f":
        raise InputError(f"{path}: array is {arr.dtype} {arr.shape}, expected float (N, 64, 64)")
    if len(arr) == 0:
        raise InputError(f"{path}: no items")
    return Items([str(i) for i in range(len(arr))], images=arr)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


JOB_FILE = "job.json"


def check_job(
    job_file: Path, job: dict[str, Any], resume: bool, output: Path, has_work: bool
) -> None:
    """A resumed output must come from the same job (input content, model, version, format):
    else its items would mix with the new ones. Records the job for the next resume."""
    if resume and (job_file.exists() or has_work):
        try:
            old = json.loads(job_file.read_text())
        except (OSError, ValueError):
            old = None
        if old != job:
            what = (
                "it has no record of the job that wrote it"
                if old is None
                else "the input or the options changed since ("
                + ", ".join(k for k in job if old.get(k) != job[k])
                + ")"
            )
            raise InputError(
                f"{output}: cannot resume: {what}; run without --resume to start over "
                "(it replaces that output), or choose another output"
            )
        return
    atomic_write(job_file, json.dumps(job, sort_keys=True).encode())


class PngDir:
    """Render output to a directory: `<name>.png` per item, each written atomically."""

    def __init__(self, path: Path, resume: bool, job: dict[str, Any]) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        has_work = any(path.glob("*.png"))
        check_job(path / f".coordconv-{JOB_FILE}", job, resume, path, has_work)

    def done(self, names: list[str]) -> set[int]:
        if not self.resume:
            return set()
        return {i for i, n in enumerate(names) if (self.path / f"{n}.png").is_file()}

    def write(self, idx: np.ndarray, names: list[str], result: np.ndarray) -> None:
        for i, image in zip(idx.tolist(), result, strict=True):
            atomic_write(self.path / f"{names[i]}.png", encode_png(image))

    def finish(self, names: list[str]) -> None:
        pass


class StagedFile:
    """A single-file output (.npy or .csv) assembled from parts once every item is done.

    Parts live in `<output>.parts/` as `part-K.npz` (indices + rows), each written atomically and
    then recorded in `journal.jsonl`; only journaled parts count, so a part whose journal line was
    lost to a kill is simply redone.
    """

    def __init__(self, path: Path, resume: bool, job: dict[str, Any]) -> None:
        self.path = path
        self.stage = path.with_name(path.name + ".parts")
        self.journal = self.stage / "journal.jsonl"
        if not resume and self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True, exist_ok=True)
        check_job(self.stage / JOB_FILE, job, resume, path, self.journal.exists())
        self.parts = self._read_journal()

    def _read_journal(self) -> list[str]:
        if not self.journal.exists():
            return []
        parts = []
        for line in self.journal.read_text().splitlines():
            try:
                name = json.loads(line)["part"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a kill
            if (self.stage / name).is_file():
                parts.append(name)
        return parts

    def done(self, names: list[str]) -> set[int]:
        done: set[int] = set()
        for part in self.parts:
            with np.load(self.stage / part) as z:
                done.update(z["idx"].tolist())
        return done

    def write(self, idx: np.ndarray, names: list[str], result: np.ndarray) -> None:
        name = f"part-{int(idx[0]):08d}-{len(self.parts):06d}-{os.getpid()}.npz"
        buf = io.BytesIO()
        np.savez(buf, idx=idx, rows=result)
        atomic_write(self.stage / name, buf.getvalue())
        with open(self.journal, "a") as f:
            f.write(json.dumps({"part": name, "items": len(idx)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.parts.append(name)

    def _rows(self, n: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        count = np.zeros(n, dtype=np.int64)
        for part in self.parts:
            with np.load(self.stage / part) as z:
                idx, rows = z["idx"], z["rows"]
            count[idx] += 1
            yield idx, rows
        if not np.all(count == 1):
            raise InputError(f"{self.stage}: staged parts do not cover every item exactly once")

    def finish(self, names: list[str]) -> None:
        n = len(names)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        if self.path.suffix.lower() == ".npy":
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(n, CANVAS, CANVAS)
            )
            for idx, rows in self._rows(n):
                out[idx] = rows
            out.flush()
            del out
        else:  # locate: x, y, and the confidence and verdict where the model answers them
            located = np.full((n, 4), np.nan)
            for idx, rows in self._rows(n):
                located[idx, : rows.shape[1]] = rows
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["name", "x", "y", "confidence", "ok"])
                for name, (x, y, conf, ok) in zip(names, located.tolist(), strict=True):
                    verdict = "" if math.isnan(ok) else ("true" if ok else "false")
                    shown = "" if math.isnan(conf) else f"{conf:.4f}"
                    w.writerow([name, f"{x:.4f}", f"{y:.4f}", shown, verdict])
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        shutil.rmtree(self.stage)
