"""How a CPU process of training, export and evaluation uses the machine: it keeps freed memory,
and its onnxruntime sessions take the threads torch would and never spin.

Keep freed memory in the process instead of giving it back to the kernel after every batch.

glibc's malloc serves a block over 32 MiB (and, past its trim threshold, the top of the heap) with
fresh pages from the kernel and hands them back on `free`; the next batch faults them in again,
page by page. Training, export checks and evaluation allocate such blocks on every batch (a
batch of 64 activations of 32 channels on the 64x64 canvas is 32 MiB), so without this a CPU
spent most of its time in the kernel: a 0-epoch pixel run (the whole data set evaluated once)
took 25.4 s, 16.2 s of it in the kernel, with 4.85 million page faults; with it 9.3 s, 0.6 s and
0.14 million. A one-epoch pixel run (training and evaluation) went from 44.4 s to 25.4 s and
ended with the same weights, byte for byte: only where the memory comes from changes.

Process-wide and for the rest of the process, like torch's thread count: the price is that the
process keeps the memory of its largest batch (tens of MiB here) until it exits.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB from the heap, and up to 1 GiB of free heap kept

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Set both thresholds once per process; True where the C library took them (glibc), False
    where it has no `mallopt` (macOS, Windows) or refused: nothing else changes there."""
    global _kept
    if _kept is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (AttributeError, OSError):
            _kept = False
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            _kept = all(mallopt(p, KEEP_BYTES) == 1 for p in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD))
    return _kept


def _omp_threads() -> int:
    """OMP_NUM_THREADS's first number (OpenMP allows a list per nesting level, "4,2"); 0, the
    runtime's own choice, where it is unset or not a number."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def session(model: str | Path | bytes) -> Any:
    """An onnxruntime CPU session for checking or judging a model (not for serving it): as many
    threads as OpenMP is given (OMP_NUM_THREADS, torch's own setting; unset: one per core), and
    no spinning between runs, as the service's (service/models/runtime.py). onnxruntime's default
    spins its idle threads, which took a fifth more CPU for the same batch-1 pass of an export
    check (9.2 CPU s against 7.9) and starved whatever ran beside it."""
    import onnxruntime as ort

    keep_freed_memory()
    options = ort.SessionOptions()
    options.intra_op_num_threads = _omp_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
