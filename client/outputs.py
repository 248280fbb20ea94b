"""Outputs the client owns: one job per output, never a file it did not write, never half-written.

Every output carries a job record (what made it: a hash of the input's content and ids, the
task, model, version, output format, --min-confidence; and whether it is finished), kept after
the job completes: `.coordconv-job.json` inside a PNG folder, `.NAME.coordconv-job.json` beside
a single file. Against what is already at the output path:

- nothing there (no file; an empty folder, or one holding only the client's own record and
  temporary files): the job starts.
- something the client did not write for any job (no record): refused; `--overwrite` replaces
  it.
- another job's output, finished or not: refused (with `--resume`: "cannot resume: the input or
  the options changed"); `--overwrite` replaces it.
- this job's output: refused without a flag; `--resume` continues it (a finished one: nothing is
  sent, exit status as the job ended; a finished single file changed since is refused),
  `--overwrite` redoes it.

`--overwrite` replaces an output wholly: a single file with everything the client kept beside it;
a PNG folder loses every *.png and the client's record and temporary files, and is refused if it
holds anything else (other files or folders are never deleted), so afterwards it holds this job's
files only. Nothing is removed or created, not even a folder, until the first result (or the
first failed item) is written: a job refused by the service, or a service never reached, leaves
the output path as it was, and rerunning it needs no flag.

PNGs are written to a temporary name and renamed; a single-file output (.npy, .csv) is built
from staged parts (`NAME.parts/`, listed in a journal) and assembled, again to a temporary name,
only once every item is done. A killed run's temporary files are removed on --resume and on a
fresh start. A lock (flock on the output folder or the parts folder) keeps a second client off an
output while one is writing it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from client.files import Batch, InputError, atomic_write, naming, tmp_name
from coordconv.contract import CANVAS
from coordconv.png import encode_png

RECORD_IN_DIR = ".coordconv-job.json"
RECORD_FORMAT = 1
_PNG_TMP = re.compile(
    r"^\..+\.png\.tmp-\d+$|^\.\.coordconv-job\.json\.tmp-\d+$|^\.coordconv-probe\.tmp-\d+$"
)
_OLD_PROBE = re.compile(r"^\.coordconv-write-test-\d+$")  # left by clients before this one
_PART_FILE = re.compile(r"^(part-\d+-\d+-\d+\.npz|journal\.jsonl|job\.json|\..+\.tmp-\d+)$")
IMAGE_BYTES = CANVAS * CANVAS * 4
# A staged part holds its rows (float32 images) and their indices, in an uncompressed .npz:
# per item its image, its index and a share of the part's headers; and some room to spare.
PART_OVERHEAD = 64
MARGIN = 1_000_000

Flag = Callable[[str, str], None]


def _sibling_tmp(name: str) -> re.Pattern[str]:
    """The client's temporary files beside an output `name`: its own, its failed list's and its
    record's and its write probe's (`.NAME.tmp-PID`, `.NAME.failed.csv.tmp-PID`,
    `..NAME.coordconv-job.json.tmp-PID`, `.NAME.probe.tmp-PID`)."""
    return re.compile(
        rf"^\.\.?{re.escape(name)}(\.failed\.csv|\.coordconv-job\.json|\.probe)?\.tmp-\d+$"
    )


def _stale(name: str) -> bool:
    """A temporary file of another (dead: the output is locked) process, not this one's."""
    return not name.endswith(f".tmp-{os.getpid()}")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("job"), dict):
        return None
    return rec


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys: list[str] = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            shown = "input" if k in ("input_sha256", "items") else k
            if shown not in keys:
                keys.append(shown)
    return ", ".join(keys)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _lock(path: Path, output: Path) -> int | None:
    """An exclusive lock on folder `path` for this process, or InputError if another holds it;
    None where the platform has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise InputError(
            f"{output}: in use by another coordconv client right now; wait for it to finish "
            "or choose another output"
        ) from None
    return fd


def _existing_dir(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Output:
    """What the two kinds share: the ownership decision, the record, the lock, cleaning up."""

    record: Path

    def __init__(
        self, path: Path, job: dict[str, Any], n: int, resume: bool, overwrite: bool
    ) -> None:
        self.path = path  # as the user wrote it, for messages
        self.real = Path(os.path.abspath(path))
        self.failed = self.real.with_name(self.real.name + ".failed.csv")
        self.job, self.n = job, n
        self.resume, self.overwrite = resume, overwrite
        self.complete = False  # this job's finished output is there: nothing to send
        self.resuming = False  # continuing this job's own output
        self.fresh = False  # starting anew (what is there is replaced at the first result)
        self.below = 0  # (finished output) items below --min-confidence
        self._prepared = False
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()

    # -- what is there, and may the job write over it ------------------------------------------

    def _there(self) -> list[str]:
        """What is at the output path that a job could lose ([] = nothing)."""
        raise NotImplementedError

    def _check_replaceable(self) -> None:
        """Raise InputError if --overwrite must not delete what is there."""

    def open(self) -> None:
        """Decide, before any request, whether this job may write here; refusals raise
        InputError with one line. Nothing is changed yet, but stale temporary files of a
        resumed job."""
        p = self.path
        there = self._there()
        if not there:
            self.fresh = True
            return
        rec = _read_record(self.record)
        if self.overwrite:
            self._check_replaceable()
            self.fresh = True
            return
        if rec is None:
            if self.resume:
                raise InputError(
                    f"{p}: cannot resume: {there[0]} but there is no record of the job that "
                    "wrote it; --overwrite replaces it, or choose another output"
                )
            raise InputError(
                f"{p}: {there[0]}, not written by this client (no job record); --overwrite "
                "replaces it, or choose another output"
            )
        finished = rec.get("state") == "complete"
        state = "finished" if finished else "unfinished"
        if rec["job"] != self.job:
            changed = _changed(rec["job"], self.job)
            if self.resume:
                raise InputError(
                    f"{p}: cannot resume: the input or the options changed since ({changed}); "
                    "--overwrite starts over (it replaces that output), or choose another output"
                )
            raise InputError(
                f"{p}: holds the {state} output of another job (other {changed}); --overwrite "
                "replaces it, or choose another output"
            )
        if not self.resume:
            if finished:
                raise InputError(
                    f"{p}: already holds the finished output of this job; --resume checks it "
                    "and sends nothing, --overwrite redoes it"
                )
            raise InputError(
                f"{p}: holds an unfinished run of this job; --resume continues it, --overwrite "
                "starts over"
            )
        self._resume(rec)

    def probe(self) -> None:
        """A fresh start: fail now if the output cannot be written (read-only, /proc, ...), by
        writing and removing a temporary file where the output goes, or in the nearest folder
        above it that exists (folders are made only at the first result)."""
        if self.real.is_dir():
            probe = tmp_name(self.real / "coordconv-probe")
        else:
            target, where = self.real, self.real.parent
            while not where.exists() and where != where.parent:
                target, where = where, where.parent
            probe = tmp_name(target.with_name(target.name + ".probe"))
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write there ({exc.strerror})") from None

    def _resume(self, rec: dict[str, Any]) -> None:
        raise NotImplementedError

    def _clean_siblings(self) -> None:
        pattern = _sibling_tmp(self.real.name)
        with os.scandir(self.real.parent) as it:
            for entry in it:
                if (
                    pattern.match(entry.name)
                    and _stale(entry.name)
                    and entry.is_file(follow_symlinks=False)
                ):
                    Path(entry.path).unlink(missing_ok=True)

    def _write_record(self, state: str, **extra: Any) -> None:
        rec = {"client": "coordconv", "format": RECORD_FORMAT, "job": self.job, "state": state}
        atomic_write(self.record, json.dumps({**rec, **extra}, sort_keys=True).encode())

    # -- writing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Take the output for this job (once, at the first result or failure): lock it, remove
        what a fresh start replaces, record the job as running."""
        with self._mutex:
            if not self._prepared:
                try:
                    self._prepare()
                except OSError as exc:
                    where = f"{exc.filename}: " if exc.filename else f"{self.path}: "
                    raise InputError(f"{where}cannot write there ({exc.strerror})") from None
                self._prepared = True

    def _prepare(self) -> None:
        raise NotImplementedError

    def pending(self, batch: Batch) -> np.ndarray:
        """A mask of the items of `batch` still to do."""
        raise NotImplementedError

    def write(self, batch: Batch, result: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self, names: Iterator[str], min_confidence: float | None, flag: Flag) -> None:
        """Every item is done: the output is complete, and recorded as finished."""
        raise NotImplementedError

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def need_bytes(self) -> int:
        """Free disk space the rest of the job needs, beyond what is already written."""
        return 0


class PngDir(Output):
    """Render output to a folder: `<name>.png` per item, each written atomically."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = self.real / RECORD_IN_DIR

    def _entries(self) -> tuple[list[str], list[str]]:
        """(PNG files, other entries) of the folder, leaving out the client's own files."""
        pngs: list[str] = []
        others: list[str] = []
        if not self.real.is_dir():
            return pngs, others
        with os.scandir(self.real) as it:
            for e in it:
                if e.name == RECORD_IN_DIR or _PNG_TMP.match(e.name) or _OLD_PROBE.match(e.name):
                    continue
                if e.name.lower().endswith(".png") and e.is_file(follow_symlinks=False):
                    pngs.append(e.name)
                else:
                    others.append(e.name)
        return pngs, others

    def _there(self) -> list[str]:
        pngs, others = self._entries()
        there = []
        if pngs:
            there.append(f"holds {len(pngs)} PNG file{'s' * (len(pngs) != 1)}")
        if others:
            there.append(f"holds {len(others)} other entr{'ies' if len(others) != 1 else 'y'}")
        if self.failed.exists():
            there.append(f"{self.failed.name} exists")
        return there

    def _check_replaceable(self) -> None:
        _, others = self._entries()
        if others:
            shown = ", ".join(repr(o) for o in sorted(others)[:3])
            raise InputError(
                f"{self.path}: holds entries that are not PNG files ({shown}"
                f"{', ...' if len(others) > 3 else ''}); --overwrite only replaces a folder of "
                "PNGs and never deletes other files: move them away or choose another output"
            )

    def _resume(self, rec: dict[str, Any]) -> None:
        self.resuming = True
        self._lock_fd = _lock(self.real, self.path)
        self._clean_temps()
        self._prepared = True

    def _clean_temps(self) -> None:
        with os.scandir(self.real) as it:
            for e in it:
                if (
                    (_PNG_TMP.match(e.name) or _OLD_PROBE.match(e.name))
                    and _stale(e.name)
                    and e.is_file(follow_symlinks=False)
                ):
                    Path(e.path).unlink(missing_ok=True)
        self._clean_siblings()

    def _prepare(self) -> None:
        self.real.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.real, self.path)
        # The record first: killed below, the folder is no job's and needs --overwrite again.
        self.record.unlink(missing_ok=True)
        pngs, _ = self._entries()
        for name in pngs:
            (self.real / name).unlink(missing_ok=True)
        self._clean_temps()
        self.failed.unlink(missing_ok=True)
        self._write_record("running")

    def pending(self, batch: Batch) -> np.ndarray:
        if not self.resuming:
            return np.ones(len(batch), dtype=bool)
        return np.array(
            [not os.path.exists(self.real / f"{n}.png") for n in batch.names], dtype=bool
        )

    def write(self, batch: Batch, result: np.ndarray) -> None:
        self.prepare()
        for name, image in zip(batch.names, result, strict=True):
            atomic_write(self.real / f"{name}.png", encode_png(image))

    def finish(self, names: Iterator[str], min_confidence: float | None, flag: Flag) -> None:
        self.prepare()
        self._write_record("complete", items=self.n)


class StagedFile(Output):
    """A single-file output (.npy or .csv) assembled from parts once every item is done.

    Parts live in `<output>.parts/` as `part-K.npz` (indices + rows), each written atomically and
    then recorded in `journal.jsonl`; only journaled parts count, so a part whose journal line was
    lost to a kill is simply redone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = self.real.with_name(f".{self.real.name}.coordconv-job.json")
        self.stage = self.real.with_name(self.real.name + ".parts")
        self.journal = self.stage / "journal.jsonl"
        self.parts: list[str] = []
        self.done_mask = np.zeros(self.n, dtype=bool)

    def _stage_entries(self) -> list[str]:
        if not self.stage.is_dir():
            return []
        return [
            e.name
            for e in os.scandir(self.stage)
            if not (e.name.startswith(".") and ".tmp-" in e.name)
        ]

    def _there(self) -> list[str]:
        there = []
        if self.real.is_dir():
            raise InputError(f"{self.path}: is a directory; expected a file name")
        if self.real.exists() or self.real.is_symlink():
            there.append("exists")
        if self.stage.exists() and (not self.stage.is_dir() or self._stage_entries()):
            there.append(f"{self.stage.name} (staged parts of an unfinished job) exists")
        if self.failed.exists():
            there.append(f"{self.failed.name} exists")
        return there

    def _check_replaceable(self) -> None:
        if self.stage.exists() and not self.stage.is_dir():
            raise InputError(f"{self.stage}: is not a folder of staged parts; move it away")
        if _read_record(self.record) is None:
            foreign = [n for n in self._stage_entries() if not _PART_FILE.match(n)]
            if foreign:
                raise InputError(
                    f"{self.stage}: holds files this client did not write ({foreign[0]!r}); "
                    "move them away or choose another output"
                )

    def _stamp(self) -> list[int]:
        st = self.real.stat()
        return [st.st_size, st.st_mtime_ns]

    def _resume(self, rec: dict[str, Any]) -> None:
        if rec.get("state") == "complete":
            if not self.real.exists():  # removed since: the job is done again
                self.fresh = True
                return
            if rec.get("stamp") != self._stamp():
                raise InputError(
                    f"{self.path}: changed since this job wrote it; --overwrite replaces it, or "
                    "choose another output"
                )
            self.complete = True
            self.below = int(rec.get("below_min_confidence") or 0)
            if self.stage.is_dir():  # a kill between finishing and tidying up
                shutil.rmtree(self.stage, ignore_errors=True)
            self._clean_siblings()
            return
        self.resuming = True
        self.stage.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.stage, self.path)
        for e in os.scandir(self.stage):
            if e.name.startswith(".") and ".tmp-" in e.name and _stale(e.name):
                Path(e.path).unlink(missing_ok=True)
        self._clean_siblings()
        self.parts = self._read_journal()
        for part in self.parts:
            with np.load(self.stage / part) as z:
                self.done_mask[z["idx"]] = True
        self._prepared = True

    def _prepare(self) -> None:
        self.stage.mkdir(parents=True, exist_ok=True)  # and the folders above it
        self._lock_fd = _lock(self.stage, self.path)
        self.record.unlink(missing_ok=True)
        self.real.unlink(missing_ok=True)
        self.failed.unlink(missing_ok=True)
        self._clean_siblings()
        for e in os.scandir(self.stage):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                Path(e.path).unlink(missing_ok=True)
        self.parts = []
        self._write_record("running")

    def _read_journal(self) -> list[str]:
        if not self.journal.exists():
            return []
        parts = []
        for line in self.journal.read_text().splitlines():
            try:
                name = json.loads(line)["part"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a kill
            if isinstance(name, str) and _PART_FILE.match(name) and (self.stage / name).is_file():
                parts.append(name)
        return parts

    def need_bytes(self) -> int:
        if self.complete or self.real.suffix.lower() != ".npy":
            return 0
        remaining = int(self.n - self.done_mask.sum())
        return remaining * (IMAGE_BYTES + PART_OVERHEAD) + self.n * IMAGE_BYTES + MARGIN

    def pending(self, batch: Batch) -> np.ndarray:
        return ~self.done_mask[batch.idx]

    def write(self, batch: Batch, result: np.ndarray) -> None:
        self.prepare()
        buf = io.BytesIO()
        np.savez(buf, idx=batch.idx, rows=result)
        with self._mutex:
            name = f"part-{int(batch.idx[0]):08d}-{len(self.parts):06d}-{os.getpid()}.npz"
            self.parts.append(name)
        atomic_write(self.stage / name, buf.getvalue())
        line = json.dumps({"part": name, "items": len(batch)}) + "\n"
        with self._mutex, naming(self.journal), open(self.journal, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        count = np.zeros(self.n, dtype=np.uint8)
        for part in self._read_journal():
            with np.load(self.stage / part) as z:
                idx, rows = z["idx"], z["rows"]
            count[idx] += 1
            yield idx, rows
        if not np.all(count == 1):
            raise InputError(f"{self.stage}: staged parts do not cover every item exactly once")

    def finish(self, names: Iterator[str], min_confidence: float | None, flag: Flag) -> None:
        self.prepare()
        with naming(self.real):
            self._assemble(names, min_confidence, flag)

    def _assemble(self, names: Iterator[str], min_confidence: float | None, flag: Flag) -> None:
        n = self.n
        tmp = tmp_name(self.real)
        below = 0
        if self.real.suffix.lower() == ".npy":
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(n, CANVAS, CANVAS)
            )
            for idx, rows in self._rows():
                out[idx] = rows
            out.flush()
            del out
        else:  # locate: x, y, and the confidence and verdict where the model answers them
            located = np.full((n, 4), np.nan)
            for idx, rows in self._rows():
                located[idx, : rows.shape[1]] = rows
            header = ["name", "x", "y", "confidence", "ok"]
            if min_confidence is not None:
                header.append("below_min_confidence")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                for name, (x, y, conf, ok) in zip(names, located.tolist(), strict=True):
                    verdict = "" if math.isnan(ok) else ("true" if ok else "false")
                    shown = "" if math.isnan(conf) else f"{conf:.4f}"
                    row = [name, f"{x:.4f}", f"{y:.4f}", shown, verdict]
                    if min_confidence is not None:
                        low = not conf >= min_confidence  # NaN (no confidence) is low too
                        row.append("true" if low else "false")
                        if low:
                            below += 1
                            what = shown or "none (the model answers no confidence)"
                            flag(name, f"confidence {what} below --min-confidence {min_confidence}")
                    w.writerow(row)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.real)
        self._write_record("complete", items=n, stamp=self._stamp(), below_min_confidence=below)
        self.below = below
        shutil.rmtree(self.stage)


def open_output(
    task: str, path: Path, job: dict[str, Any], n: int, resume: bool, overwrite: bool
) -> Output:
    out: Output
    if task == "render" and path.suffix.lower() != ".npy":
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: is a file; render writes PNGs into a directory")
        out = PngDir(path, job, n, resume, overwrite)
    else:
        out = StagedFile(path, job, n, resume, overwrite)
    out.open()
    try:
        if out.fresh:
            out.probe()
        need = out.need_bytes()
        if need:
            where = _existing_dir(out.real.parent)
            free = shutil.disk_usage(where).free
            if need > free:
                raise InputError(
                    f"{path}: needs {human_bytes(need)} of free disk (the staged parts, then the "
                    f"{human_bytes(n * IMAGE_BYTES)} array) but {where} has {human_bytes(free)} "
                    "free; free some space or choose another output"
                )
    except BaseException:
        out.close()
        raise
    return out
