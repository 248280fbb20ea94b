"""The model repository on disk (Triton's layout), read without loading anything:

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx
    <repo>/<name>/warmup/<file>        model_warmup input_data_file (service/models/warmup.py)

An ensemble (`platform: "ensemble"`) has version folders without a model file, as in Triton.
A scan gives each model's version files, its config's text and a fingerprint (size and
modification time of each ONNX file, the config's bytes), which poll mode compares to notice
added, removed and changed versions.

Rules that keep a hostile or broken repository from hurting the server:
- Names are checked before they touch the file system, so a request cannot walk out of it.
- Version folders are ASCII digits only ("01" is version 1); anything else is ignored with one
  warning, as Triton ignores non-numeric folders.
- One symbolic-link rule for model and version folders alike: followed, and required to resolve
  inside the repository; one that points out of it is ignored (a version) or refused (a model).
- Files are read only if they are regular files (a FIFO, a device or a socket is refused by its
  type, without blocking on it) and no larger than a limit.
- Messages name paths relative to the repository, never the server's own paths.

Every function here blocks: the registry runs them through `Reads` (service/models/reads.py),
on threads of their own with a time limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from coordconv.triton import MODEL_NAME_RE
from service.errors import BadRequest, ModelError, NotFound, RepositoryError
from service.models.config import CONFIG_FILE, ENSEMBLE, is_ensemble, parse_text

log = logging.getLogger("coordconv.repository")
ONNX_FILE = "model.onnx"
CONFIG_BYTES = 1 << 20  # a config.pbtxt is a few hundred bytes
_warned: set[str] = set()  # folders already warned about (one warning each)


@dataclass(frozen=True)
class ModelFiles:
    """What is on disk for one model: its directory, its version files, its config's text and
    a fingerprint."""

    name: str
    path: Path
    versions: dict[int, Path]  # version -> model.onnx
    config_text: str | None  # None: no config.pbtxt
    fingerprint: tuple[object, ...]
    # Every version folder, with or without its model file (an ensemble's have none).
    folders: dict[int, Path] = field(default_factory=dict)

    def version_fingerprint(self, version: int) -> tuple[object, ...]:
        return _file_stamp(self.versions[version])

    @property
    def has_versions(self) -> bool:
        """Something to serve: a version's model file, or (an ensemble) a version folder."""
        return bool(self.versions) or (bool(self.folders) and is_ensemble_text(self.config_text))


def is_ensemble_text(text: str | None) -> bool:
    """Whether a config's text is an ensemble's (unreadable text is not: its load says why)."""
    if text is None or ENSEMBLE not in text:
        return False
    try:
        return is_ensemble(parse_text(text, "config"))
    except ModelError:
        return False


def _file_stamp(path: Path) -> tuple[object, ...]:
    try:
        st = path.stat()
    except OSError:
        return (path.name, None)
    return (path.name, st.st_size, st.st_mtime_ns)


def relative(path: Path, repo: Path) -> str:
    """`path` as a message may name it: relative to the repository."""
    try:
        return str(path.relative_to(repo))
    except ValueError:
        return path.name


def version_number(text: str) -> int | None:
    """A version as a number: ASCII digits only ("01" is 1); None for anything else."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def check_root(repo: Path) -> None:
    if not repo.exists():
        raise RepositoryError(f"model repository {repo} does not exist")
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory")
    if not os.access(repo, os.R_OK | os.X_OK):
        raise RepositoryError(f"model repository {repo} is not readable")


def inside(path: Path, repo: Path) -> bool:
    try:
        return path.resolve().is_relative_to(repo.resolve())
    except (OSError, RuntimeError):  # a loop of links
        return False


def model_names(repo: Path) -> list[str]:
    """Every folder of the repository that could be a model, sorted."""
    try:
        entries = list(repo.iterdir())
    except OSError as exc:
        raise RepositoryError(f"the model repository is not readable: {exc.strerror}") from None
    return sorted(
        p.name for p in entries if MODEL_NAME_RE.match(p.name) and _is_dir(p) and inside(p, repo)
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def check_name(name: str) -> str:
    """A model name from a request: refused before it is joined to a path."""
    if not MODEL_NAME_RE.match(name):
        raise BadRequest(
            f"invalid model name {name[:80]!r}: letters, digits, '-', '_' and '.', starting "
            "with a letter or digit"
        )
    return name


def read_regular(path: Path, limit: int, what: str) -> bytes | None:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; None if it does not
    exist; ModelError (naming `what`, never the server path) for anything else. Opened without
    blocking, so a FIFO or a device is refused by its type instead of hanging the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"{what}: cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "not a regular file"
            )
            raise ModelError(f"{what} is {kind}, not a regular file")
        if st.st_size > limit:
            raise ModelError(f"{what} is {st.st_size} bytes, over the limit of {limit}")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # grew while being read
                raise ModelError(f"{what} is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ModelError(f"{what}: cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)


def scan(repo: Path, name: str) -> ModelFiles:
    """The files of model `name`; NotFound when the repository has no such folder."""
    check_name(name)
    path = repo / name
    if not _is_dir(path):
        raise NotFound(f"model {name!r} is not in the model repository")
    if not inside(path, repo):
        raise NotFound(
            f"model folder {name!r} is a symbolic link that leads out of the model repository"
        )
    versions: dict[int, Path] = {}
    folders: dict[int, Path] = {}
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise NotFound(f"model folder {name!r} is not readable: {exc.strerror}") from None
    for entry in entries:
        number = version_number(entry.name)
        if number is None:
            if _is_dir(entry) and not entry.name.startswith("."):
                _warn_once(entry, f"{name}/{entry.name[:40]!r}: not a version (ASCII digits only)")
            continue
        if not inside(entry, repo):
            _warn_once(entry, f"{name}/{entry.name}: a symbolic link out of the repository")
            continue
        # Only complete versions: the exporter renames a finished folder into place, and a
        # folder still being copied in (poll mode) is picked up once its file is there.
        onnx = entry / ONNX_FILE
        if _is_dir(entry):
            folders.setdefault(number, entry)
        if _is_dir(entry) and onnx.exists() and inside(onnx, repo):
            if number in versions:  # "1" and "01": the first, sorted by name
                _warn_once(entry, f"{name}/{entry.name}: another folder is version {number}")
                continue
            versions[number] = onnx
    data = read_regular(path / CONFIG_FILE, CONFIG_BYTES, f"{name}/{CONFIG_FILE}")
    config_hash = None if data is None else hashlib.sha256(data).hexdigest()
    try:
        text = None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"model {name}: {CONFIG_FILE} is not UTF-8 text") from None
    fingerprint: tuple[object, ...] = (
        config_hash,
        *sorted((v, _file_stamp(p)) for v, p in versions.items()),
    )
    empty = tuple(sorted(set(folders) - set(versions)))
    if empty:  # an ensemble's version folders (only then: other fingerprints stay as they were)
        fingerprint = (*fingerprint, ("folders", empty))
    return ModelFiles(name, path, versions, text, fingerprint, folders)


def read_model(repo: Path, path: Path, limit: int) -> bytes:
    """A version's ONNX file, checked like every repository file."""
    where = relative(path, repo)
    data = read_regular(path, limit, where)
    if data is None:
        raise ModelError(f"{where} has disappeared")
    return data


def _warn_once(path: Path, message: str) -> None:
    key = str(path)
    if key not in _warned:
        _warned.add(key)
        log.warning("ignored %s", message)
