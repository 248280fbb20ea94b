"""Logging: one handler on stderr, text or one JSON object per line (LOG_FORMAT), with the
request's facts (request id, protocol, status, model, version, worker) as fields."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

LOG_FIELDS = (
    "request_id",
    "protocol",
    "status",
    "path",
    "method",
    "duration_ms",
    "model",
    "version",
    "worker",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [
            f"{k}={getattr(record, k)}"
            for k in ("worker", "request_id")
            if getattr(record, k, "") != ""
        ]
        return f"{text} [{' '.join(tags)}]" if tags else text


class StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is at each record, not as it was when logging was set up: a
    server started in-process under a replaced stderr (pytest's capture, a redirect) that outlives
    it would otherwise write to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str, fmt: str, worker: int | None = None) -> None:
    """One handler on stderr, text or JSON; with `worker`, each line names the worker process."""
    handler = StderrHandler()
    if worker is not None:

        def tag(record: logging.LogRecord) -> bool:
            record.worker = worker
            return True

        handler.addFilter(tag)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
