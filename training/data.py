"""Not-so-Clevr: 9x9 squares and one-hot pixels on a 64x64 canvas, and the paper's splits.

Conventions (the README's Conventions section): a point is (x, y) in pixels, x the column and y
the row; arrays are indexed [n][y][x]; images are float32 in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from coordconv.contract import CANVAS, SQUARE

HALF = SQUARE // 2
LOW, HIGH = HALF, CANVAS - 1 - HALF  # centres 4..59, so every square lies inside the canvas
N_SAMPLES = (HIGH - LOW + 1) ** 2  # 3136
QUADRANT_EDGE = 32  # test iff x > 32 and y > 32

Split = Literal["uniform", "quadrant", "all", "full"]
# "full": the full-canvas (version 2) models: every integer centre 0..63 and sub-pixel points to
# train on, every integer centre to test on (see train.task_data).
SPLITS: tuple[Split, ...] = ("uniform", "quadrant", "all", "full")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def centres() -> FloatArray:
    """All 3136 centres as (N, 2) float32 (x, y), row-major: y outer, x inner."""
    ys, xs = np.meshgrid(np.arange(LOW, HIGH + 1), np.arange(LOW, HIGH + 1), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def full_centres() -> FloatArray:
    """Every integer centre of the canvas, 0..63 on both axes (4096), row-major: the full-canvas
    (version 2) models' positions; squares near the border are clipped."""
    ys, xs = np.meshgrid(np.arange(CANVAS), np.arange(CANVAS), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def subpixel_points(n: int, seed: int, margin: float = 0.05) -> FloatArray:
    """`n` seeded real-valued points on the canvas, none within `margin` of a .5 tie (where the
    nearest integer centre would be ambiguous)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, CANVAS - 1, size=(n * 2, 2))
    frac = pts - np.floor(pts)
    keep = (np.abs(frac - 0.5) >= margin).all(axis=1)
    out = pts[keep][:n]
    assert len(out) == n
    return out.astype(np.float32)


def _check_points(points: npt.ArrayLike) -> npt.NDArray[np.int64]:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)) or pts.min(initial=0) < 0 or pts.max(initial=0) > CANVAS - 1:
        raise ValueError(f"points must be finite and in [0, {CANVAS - 1}]")
    return np.rint(pts).astype(np.int64)


def squares(points: npt.ArrayLike) -> FloatArray:
    """Binary 9x9 squares centred on the (rounded) points, clipped to the canvas: (N, 64, 64)."""
    pts = _check_points(points)
    grid = np.arange(CANVAS)
    in_x = np.abs(grid[None, :] - pts[:, :1]) <= HALF  # (N, 64) columns covered
    in_y = np.abs(grid[None, :] - pts[:, 1:]) <= HALF  # (N, 64) rows covered
    return (in_y[:, :, None] & in_x[:, None, :]).astype(np.float32)


def onehots(points: npt.ArrayLike) -> FloatArray:
    """Images with the single pixel at each (rounded) point set to 1: (N, 64, 64)."""
    pts = _check_points(points)
    out = np.zeros((len(pts), CANVAS, CANVAS), dtype=np.float32)
    out[np.arange(len(pts)), pts[:, 1], pts[:, 0]] = 1.0
    return out


def pixel_index(points: npt.ArrayLike) -> IntArray:
    """The flat index y * 64 + x of each (rounded) point: the classification target."""
    pts = _check_points(points)
    return pts[:, 1] * CANVAS + pts[:, 0]


def split_indices(
    split: Split, seed: int = 0, test_fraction: float = 0.25
) -> tuple[IntArray, IntArray]:
    """(train, test) indices into `centres()`, each sorted.

    uniform: a seeded permutation; the first round(test_fraction * 3136) are the test set.
    quadrant: the test set is every centre with x > 32 and y > 32 (729 of them).
    all: every sample in train and test (used for models trained on everything).
    """
    n = N_SAMPLES
    if split == "uniform":
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = np.random.default_rng(seed).permutation(n)
        n_test = round(test_fraction * n)
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    if split == "quadrant":
        c = centres()
        test = (c[:, 0] > QUADRANT_EDGE) & (c[:, 1] > QUADRANT_EDGE)
        return np.flatnonzero(~test), np.flatnonzero(test)
    if split == "all":
        every = np.arange(n)
        return every, every.copy()
    if split == "full":
        raise ValueError("the full-canvas split is not a split of the 3136 centres: see task_data")
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
