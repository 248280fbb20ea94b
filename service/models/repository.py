"""The model repository on disk (Triton's layout), read without loading anything:

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx

A scan gives each model's version files with a fingerprint (size and modification time of the
ONNX file, the config's bytes), which poll mode compares to notice added, removed and changed
versions. Names are checked before they touch the file system, so a request cannot walk out of
the repository.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from coordconv.contract import MODEL_NAME_RE
from service.errors import BadRequest, NotFound, RepositoryError
from service.models.config import CONFIG_FILE

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelFiles:
    """What is on disk for one model: its directory, its version files and a fingerprint."""

    name: str
    path: Path
    versions: dict[int, Path]  # version -> model.onnx
    fingerprint: tuple[object, ...]

    def version_fingerprint(self, version: int) -> tuple[object, ...]:
        return _file_stamp(self.versions[version])


def _file_stamp(path: Path) -> tuple[object, ...]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns)


def check_root(repo: Path) -> None:
    if not repo.exists():
        raise RepositoryError(f"model repository {repo} does not exist")
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory")
    if not os.access(repo, os.R_OK | os.X_OK):
        raise RepositoryError(f"model repository {repo} is not readable")


def model_names(repo: Path) -> list[str]:
    """Every directory of the repository that could be a model, sorted."""
    try:
        entries = list(repo.iterdir())
    except OSError as exc:
        raise RepositoryError(f"model repository {repo} is not readable: {exc.strerror}") from None
    return sorted(p.name for p in entries if p.is_dir() and MODEL_NAME_RE.match(p.name))


def check_name(name: str) -> str:
    """A model name from a request: refused before it is joined to a path."""
    if not MODEL_NAME_RE.match(name):
        raise BadRequest(
            f"invalid model name {name[:80]!r}: letters, digits, '-', '_' and '.', starting "
            "with a letter or digit"
        )
    return name


def scan(repo: Path, name: str) -> ModelFiles:
    """The files of model `name`; NotFound when the repository has no such directory."""
    check_name(name)
    path = repo / name
    if not path.is_dir() or (
        path.is_symlink() and not path.resolve().is_relative_to(repo.resolve())
    ):
        raise NotFound(f"model {name!r} is not in the model repository {repo}")
    versions: dict[int, Path] = {}
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise NotFound(f"model directory {path} is not readable: {exc.strerror}") from None
    for entry in entries:
        # Only complete versions: the exporter renames a finished directory into place, and
        # a directory still being copied in (poll mode) is picked up once its file is there.
        if entry.name.isdigit() and entry.is_dir() and (entry / ONNX_FILE).is_file():
            versions[int(entry.name)] = entry / ONNX_FILE
    config = path / CONFIG_FILE
    try:
        config_hash = hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError:
        config_hash = None
    fingerprint = (config_hash, *sorted((v, _file_stamp(p)) for v, p in versions.items()))
    return ModelFiles(name=name, path=path, versions=versions, fingerprint=fingerprint)
