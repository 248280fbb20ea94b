"""The service's log set-up: one handler, on stderr as it is when a record is written."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from service.logs import configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_record_goes_to_stderr_as_it_is_now_not_to_a_closed_one(
    restore_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("info", "json", worker=3)
    first.close()  # the stderr logging was set up under is gone (pytest's capture, a redirect)
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    logging.getLogger("service.test").info("after %s", "close", extra={"request_id": "r1"})
    record = json.loads(now.getvalue())
    assert record["message"] == "after close"
    assert record["worker"] == 3 and record["request_id"] == "r1"
    assert record["level"] == "info"
