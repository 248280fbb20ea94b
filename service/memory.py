"""Handing freed memory back to the system: glibc keeps large freed blocks in the process
otherwise, so dropped answers and unloaded models would stay in the RSS."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_tried = False


def release_memory() -> None:
    global _trim, _tried
    if not _tried:
        _tried = True
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _trim = None
    if _trim is not None:
        _trim(0)
