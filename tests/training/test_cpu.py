"""training.cpu: freed batches stay in the process instead of being faulted in again, and the
sessions that check and judge models take torch's threads and never spin."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.helpers import MODELS, ROOT

# Allocates and frees a 64 MiB tensor twenty times, as a batch loop does, and prints the page
# faults that cost: each fresh block from the kernel faults in 16,384 pages.
LOOP = """
import resource, sys
import torch
from training.cpu import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # the heap settles within a few batches
    torch.ones(64 << 20, dtype=torch.uint8)
before = faults()
for _ in range(20):
    torch.ones(64 << 20, dtype=torch.uint8)
print(faults() - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_batch_is_reused_without_faulting_its_pages_in_again() -> None:
    default, kept = faults("default"), faults("keep")
    assert default > 20 * 16_000, default  # the problem: every block faulted in afresh
    assert kept < 1_000, (default, kept)


@pytest.mark.parametrize(("omp", "threads"), [("1", 1), ("3", 3), ("4,2", 4), ("", 0), ("many", 0)])
def test_a_checking_session_takes_torchs_threads_and_never_spins(monkeypatch, omp, threads) -> None:
    from training.cpu import session

    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    options = session(MODELS / "pixel" / "1" / "model.onnx").get_session_options()
    assert options.intra_op_num_threads == threads  # 0: onnxruntime's own, one per core
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
