"""Input files: coordinates as CSV or JSONL, images as a directory of PNGs or an .npy.

Coordinates are read strictly and streamed: a first pass checks every row (numbers, ids,
duplicates), counts the rows and fingerprints the content before any request; the rows are then
read again batch by batch while the job runs. Memory does not grow with the rows read, apart from
8 bytes per row for the duplicate-id check (none at all without an `id` column).

A number is ASCII decimal only: an optional sign, digits with an optional fraction (or a fraction
alone), an optional exponent; spaces or tabs around a CSV field are ignored. `1_0`, full-width
or other non-ASCII digits, `nan`, `inf`, hex and whitespace inside a number are refused, with the
file and line. JSONL values must be JSON numbers.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from PIL import Image

from coordconv.contract import CANVAS

# An item's id names a file (<id>.png): at most this many bytes, as most file systems allow.
MAX_ID_BYTES = 200
# Rows per fingerprint update while scanning.
_CHUNK = 4096

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_AROUND = " \t"
_NOT_IN_NUMBER = re.compile(r"[^0-9+\-.eE \t]")


class InputError(Exception):
    """A bad input file or output; the message names the file and, where it can, the line."""


class _RowError(Exception):
    """A bad row: the reader adds the file and line."""


def parse_number(text: str, what: str) -> float:
    """A coordinate from CSV text: strict ASCII decimal in [0, CANVAS - 1]."""
    value = text.strip(_AROUND)
    if _NUMBER.fullmatch(value) is None:
        raise _RowError(f"{what} must be a number, got {text!r}")
    x = float(value)
    if not 0.0 <= x <= CANVAS - 1:
        raise _RowError(f"{what} = {text!r} is not in [0, {CANVAS - 1}]")
    return x


def _json_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not 0.0 <= x <= CANVAS - 1:
        raise _RowError(f"{what} = {value!r} is not in [0, {CANVAS - 1}]")
    return x


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or _BAD_NAME.search(name) is not None:
        raise _RowError(f"id {name[:40]!r} cannot name a file")
    if len(name) * 4 > MAX_ID_BYTES and len(name.encode()) > MAX_ID_BYTES:
        raise _RowError(
            f"id {name[:40]!r}... is {len(name.encode())} bytes; at most {MAX_ID_BYTES} "
            "(it names a file)"
        )
    return name


@dataclass
class Batch:
    """Consecutive work: item positions, names and payload (coords (k, 2) float32, images
    (k, 64, 64) float32, or PNG paths)."""

    idx: np.ndarray
    names: list[str]
    payload: Any

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, keep: np.ndarray) -> Batch:
        """The items where the boolean mask `keep` is true."""
        if bool(keep.all()):
            return self
        names = [n for n, k in zip(self.names, keep.tolist(), strict=True) if k]
        if isinstance(self.payload, np.ndarray):
            payload: Any = self.payload[keep]
        else:
            payload = [p for p, k in zip(self.payload, keep.tolist(), strict=True) if k]
        return Batch(self.idx[keep], names, payload)

    def halves(self) -> tuple[Batch, Batch]:
        h = len(self) // 2
        return (
            Batch(self.idx[:h], self.names[:h], self.payload[:h]),
            Batch(self.idx[h:], self.names[h:], self.payload[h:]),
        )


class Source(Protocol):
    """What a job sends: a number of items, a fingerprint of exactly what will be sent (names
    included; a resumed job must be the same), the items batch by batch, their names in order."""

    def __len__(self) -> int: ...
    def fingerprint(self) -> str: ...
    def batches(self, size: int) -> Iterator[Batch]: ...
    def iter_names(self) -> Iterator[str]: ...


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


@dataclass
class Items:
    """Items held in memory (the Python API): names in input order and their payloads (coords
    (N, 2), or images as an (N, 64, 64) array or a list of PNG paths)."""

    names: list[str]
    coords: np.ndarray | None = None
    images: np.ndarray | None = None
    pngs: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update("\0".join(self.names).encode())
        if self.coords is not None:
            h.update(np.ascontiguousarray(self.coords, dtype=np.float32).tobytes())
        if self.images is not None:
            for start, stop in _chunks(len(self.images), 1024):
                h.update(np.ascontiguousarray(self.images[start:stop]).tobytes())
        for png in self.pngs or ():
            h.update(hashlib.sha256(png.read_bytes()).digest())
        return h.hexdigest()

    def batches(self, size: int) -> Iterator[Batch]:
        for start, stop in _chunks(len(self), size):
            idx = np.arange(start, stop, dtype=np.int64)
            names = self.names[start:stop]
            payload: Any
            if self.coords is not None:
                payload = np.asarray(self.coords[start:stop], dtype=np.float32).reshape(-1, 2)
            elif self.images is not None:
                payload = np.asarray(self.images[start:stop], dtype=np.float32)
            else:
                assert self.pngs is not None
                payload = self.pngs[start:stop]
            yield Batch(idx, names, payload)

    def iter_names(self) -> Iterator[str]:
        return iter(self.names)


class _Invalid(Exception):
    """A chunk failed the fast check: the row-by-row reader finds the line and says why."""


class CoordsFile:
    """Coordinates in a .csv (a header naming x and y, and optionally id) or a .jsonl
    ({"x": .., "y": .., "id": ..} per line), checked in full on construction and then streamed.

    CSV rows are checked a few thousand at a time (one regular expression over each column, numpy
    for the values); a chunk that fails is read again row by row for the exact line and reason.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = path.suffix.lower()
        if self.kind not in (".csv", ".jsonl"):
            raise InputError(f"{path}: expected a .csv or .jsonl file")
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        self._stamp = self._stat()
        self._n, self._sha = self._scan()
        if self._n == 0:
            raise InputError(f"{path}: no items")

    def __len__(self) -> int:
        return self._n

    def fingerprint(self) -> str:
        return self._sha

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    @contextlib.contextmanager
    def _open(self) -> Iterator[TextIO]:
        try:
            # A spreadsheet's byte-order mark is fine; newline="" as the csv module wants.
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                yield f
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: not UTF-8 text") from None
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read it ({exc.strerror})") from None

    # -- the exact, row-by-row reader: for JSONL, and for the reason a CSV chunk failed --------

    def _header(self, reader: Any) -> tuple[int, int, int, int]:
        """(columns, x, y, id or -1) from the header row."""
        header = next(reader, None)
        fields = [c.strip() for c in header or []]
        if "x" not in fields or "y" not in fields:
            raise InputError(f"{self.path}:1: the header must name columns x and y, got {fields}")
        for name in ("x", "y", "id"):
            if fields.count(name) > 1:
                raise InputError(f"{self.path}:1: the header names column {name} twice")
        iid = fields.index("id") if "id" in fields else -1
        return len(fields), fields.index("x"), fields.index("y"), iid

    def _rows(self) -> Iterator[tuple[int, str, float, float]]:
        """(line number, id or "", x, y) per item, every row checked."""
        with self._open() as f:
            if self.kind == ".jsonl":
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield self._jsonl_row(line, lineno)
                return
            reader = csv.reader(f)
            width, ix, iy, iid = self._header(reader)
            for rec in reader:
                if not rec:
                    continue  # a blank line
                try:
                    if len(rec) != width:
                        raise _RowError(
                            f"wrong number of columns ({len(rec)}; the header has {width})"
                        )
                    ident = _check_name(rec[iid]) if iid >= 0 and rec[iid] else ""
                    x = parse_number(rec[ix], "x")
                    y = parse_number(rec[iy], "y")
                except _RowError as exc:
                    raise InputError(f"{self.path}:{reader.line_num}: {exc}") from None
                yield reader.line_num, ident, x, y

    def _jsonl_row(self, line: str, lineno: int) -> tuple[int, str, float, float]:
        try:
            try:
                obj = json.loads(line, parse_constant=str)  # NaN, Infinity: not numbers
            except json.JSONDecodeError as exc:
                raise _RowError(f"not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "x" not in obj or "y" not in obj:
                raise _RowError('expected an object with "x" and "y"')
            ident = obj.get("id")
            name = "" if ident is None or ident == "" else _check_name(str(ident))
            x = _json_number(obj["x"], "x")
            y = _json_number(obj["y"], "y")
        except _RowError as exc:
            raise InputError(f"{self.path}:{lineno}: {exc}") from None
        return lineno, name, x, y

    def _first_error(self) -> InputError:
        for _ in self._rows():
            pass
        return InputError(f"{self.path}: changed while being read")  # the fast check failed

    # -- chunks: what both passes read -----------------------------------------------------------

    def _chunks(self, size: int) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        """(ids ("" where none), names, xy float64 (k, 2)) per `size` rows, every row checked."""
        if self.kind == ".jsonl":
            ids: list[str] = []
            xy: list[tuple[float, float]] = []
            row = 0
            for _, ident, x, y in self._rows():
                ids.append(ident)
                xy.append((x, y))
                if len(ids) == size:
                    yield ids, _fill(ids, row), np.asarray(xy, dtype=np.float64)
                    row += len(ids)
                    ids, xy = [], []
            if ids:
                yield ids, _fill(ids, row), np.asarray(xy, dtype=np.float64)
            return
        try:
            yield from self._csv_chunks(size)
        except _Invalid:
            raise self._first_error() from None

    def _csv_chunks(self, size: int) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        with self._open() as f:
            reader = csv.reader(f)
            width, ix, iy, iid = self._header(reader)
            row = 0
            while rows := list(itertools.islice(reader, size)):
                if [] in rows:  # blank lines
                    rows = [r for r in rows if r]
                    if not rows:
                        continue
                if len(rows[0]) != width or len(set(map(len, rows))) != 1:
                    raise _Invalid
                cols = tuple(zip(*rows, strict=True))
                xy = np.empty((len(rows), 2), dtype=np.float64)
                for col, i in ((0, ix), (1, iy)):
                    # Only ASCII digits, signs, points, exponents and spaces around: on those
                    # characters float() is exactly the strict grammar (no "_", nan, inf).
                    if _NOT_IN_NUMBER.search("".join(cols[i])) is not None:
                        raise _Invalid
                    try:
                        xy[:, col] = np.asarray(cols[i], dtype=np.float64)
                    except ValueError:
                        raise _Invalid from None
                if not ((xy >= 0.0) & (xy <= CANVAS - 1)).all():
                    raise _Invalid
                ids = list(cols[iid]) if iid >= 0 else [""] * len(rows)
                names = _fill(ids, row)
                if iid >= 0:
                    _check_names(names)
                row += len(rows)
                yield ids, names, xy

    def _scan(self) -> tuple[int, str]:
        h = hashlib.sha256()
        hashes: array[int] | None = None  # of every name, once an explicit id has been seen
        n = 0
        for ids, names, xy in self._chunks(_CHUNK):
            if hashes is None and any(ids):  # row numbers alone never repeat
                hashes = array("q", (hash(str(i)) for i in range(n)))
            if hashes is not None:
                hashes.extend(map(hash, names))
            h.update("\n".join(names).encode() + b"\n")
            h.update(xy.astype(np.float32).tobytes())
            n += len(names)
        if hashes is not None:
            self._check_duplicates(np.frombuffer(hashes, dtype=np.int64))
        return n, h.hexdigest()

    def _check_duplicates(self, hashes: np.ndarray) -> None:
        ordered = hashes
        ordered.sort()  # in place: no second copy
        twice = ordered[1:][ordered[1:] == ordered[:-1]]
        if not len(twice):
            return
        suspects = set(twice.tolist())  # equal hashes; a second pass compares the names
        first: dict[str, int] = {}
        for row, (lineno, ident, _, _) in enumerate(self._rows()):
            name = ident or str(row)
            if hash(name) in suspects:
                if name in first:
                    raise InputError(
                        f"{self.path}:{lineno}: duplicate id {name!r} (first at item {first[name]})"
                    )
                first[name] = row

    def _changed(self) -> InputError:
        return InputError(
            f"{self.path}: changed while the job was running; rerun with --resume once it is "
            "final (a changed input is another job)"
        )

    def batches(self, size: int) -> Iterator[Batch]:
        if self._stat() != self._stamp:
            raise self._changed()
        start = 0
        try:
            for _, names, xy in self._chunks(size * max(1, _CHUNK // size)):
                coords = xy.astype(np.float32)
                for lo in range(0, len(names), size):
                    hi = min(lo + size, len(names))
                    idx = np.arange(start + lo, start + hi, dtype=np.int64)
                    yield Batch(idx, names[lo:hi], coords[lo:hi])
                start += len(names)
        except InputError:
            raise self._changed() from None
        if start != self._n or self._stat() != self._stamp:
            raise self._changed()

    def iter_names(self) -> Iterator[str]:
        for _, names, _ in self._chunks(_CHUNK):
            yield from names


def _fill(ids: list[str], row: int) -> list[str]:
    """Names: the id, or the row number where there is none."""
    if "" not in ids:
        return ids
    return [i or str(row + k) for k, i in enumerate(ids)]


def _check_names(names: list[str]) -> None:
    joined = "\n".join(names)
    if (
        joined.count("\n") != len(names) - 1
        or _BAD_NAME.search(joined.replace("\n", "")) is not None
        or "." in names
        or ".." in names
        or (
            max(map(len, names)) * 4 > MAX_ID_BYTES
            and any(len(n.encode()) > MAX_ID_BYTES for n in names)
        )
    ):
        raise _Invalid


def read_coords(path: Path) -> CoordsFile:
    """CSV with a header holding x, y (and optionally id), or JSONL of {"x", "y", "id"?}."""
    return CoordsFile(path)


class NpyImages:
    """Images in an (N, 64, 64) float .npy, memory-mapped; names are the row numbers."""

    def __init__(self, path: Path) -> None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy ({exc})") from None
        if arr.ndim != 3 or arr.shape[1:] != (CANVAS, CANVAS) or arr.dtype.kind != "f":
            raise InputError(
                f"{path}: array is {arr.dtype} {arr.shape}, expected float (N, 64, 64)"
            )
        if len(arr) == 0:
            raise InputError(f"{path}: no items")
        self.images = arr

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"npy {len(self)}\0".encode())
        for start, stop in _chunks(len(self), 1024):
            h.update(np.ascontiguousarray(self.images[start:stop]).tobytes())
        return h.hexdigest()

    def batches(self, size: int) -> Iterator[Batch]:
        for start, stop in _chunks(len(self), size):
            yield Batch(
                np.arange(start, stop, dtype=np.int64),
                [str(i) for i in range(start, stop)],
                np.asarray(self.images[start:stop], dtype=np.float32),
            )

    def iter_names(self) -> Iterator[str]:
        return (str(i) for i in range(len(self)))


def read_images(path: Path) -> Items | NpyImages:
    """Every *.png of a directory (sorted by name), or an (N, 64, 64) .npy."""
    if path.is_dir():
        pngs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        if not pngs:
            raise InputError(f"{path}: no .png files")
        for p in pngs:
            try:
                with Image.open(p) as im:
                    size = im.size
                    fmt = im.format
            except Exception:
                raise InputError(f"{p}: not a readable PNG") from None
            if fmt != "PNG":
                raise InputError(f"{p}: not a PNG (it is {fmt})")
            if size != (CANVAS, CANVAS):
                raise InputError(f"{p}: image is {size[0]}x{size[1]}, expected 64x64")
        return Items([p.stem for p in pngs], pngs=pngs)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix.lower() != ".npy":
        raise InputError(f"{path}: expected a directory of PNGs or an .npy file")
    return NpyImages(path)


def read_png_files(paths: Sequence[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def tmp_name(path: Path) -> Path:
    """This process's temporary name for `path` (hidden, beside it): `.NAME.tmp-PID`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError inside names `path` where it names no file: a write that finds the disk full
    raises ENOSPC with no file name, and the one line a user reads must say where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    tmp = tmp_name(path)
    with naming(path), open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
