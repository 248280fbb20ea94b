"""Not-so-Clevr: 9x9 squares and one-hot pixels on a 64x64 canvas, and the paper's splits.

Conventions (the README's Conventions section): a point is (x, y) in pixels, x the column and y
the row; arrays are indexed [n][y][x]; images are float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
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
# train on, every integer centre to test on (see task_data).
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


# -- a task's data: inputs and targets, split into train and test ------------------------------


@dataclass
class TaskData:
    """Inputs and targets of one task, split into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kinds_train: np.ndarray  # "square" | "onehot" per row for locate, "" otherwise
    kinds_test: np.ndarray


def task_data(
    task: str,
    split: Split,
    seed: int = 0,
    test_fraction: float = 0.25,
    onehot_only: bool = False,
) -> TaskData:
    """pixel: coords -> flat pixel index; render: coords -> square masks;
    locate: square and one-hot images of the same centres -> coords (`onehot_only`: one-hot
    images alone, for the paper's 906-parameter regressor)."""
    if split == "full":
        return full_canvas_data(task, seed)
    train_idx, test_idx = split_indices(split, seed=seed, test_fraction=test_fraction)
    c = centres()

    def part(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = c[idx]
        blank = np.full(len(pts), "")
        if task == "pixel":
            return pts, pixel_index(pts), blank
        if task == "render":
            return pts, squares(pts), blank
        if onehot_only:
            kind = np.full(len(pts), "onehot")
            return onehots(pts), pts, kind
        images = np.concatenate([squares(pts), onehots(pts)])
        kinds = np.array(["square"] * len(pts) + ["onehot"] * len(pts))
        return images, np.concatenate([pts, pts]), kinds

    x_tr, y_tr, k_tr = part(train_idx)
    x_te, y_te, k_te = part(test_idx)
    return TaskData(x_tr, y_tr, x_te, y_te, k_tr, k_te)


FULL_NOISE_SIGMA = 0.05  # locate v2 also trains on noisy copies: its confidence needs it exact


def full_canvas_data(task: str, seed: int = 0) -> TaskData:
    """The full-canvas (version 2) data: every integer centre 0..63 on both axes (squares clipped
    at the border) to test on; to train on, the same plus 4096 seeded sub-pixel points (pixel,
    render: the target is the nearest integer centre), or plus copies under Gaussian noise
    (locate, so that it stays exact on slightly noisy images)."""
    c = full_centres()
    blank = np.full(len(c), "")
    if task in ("pixel", "render"):
        extra = subpixel_points(len(c), seed=1000 + seed)
        x_tr = np.concatenate([c, extra])
        y_tr = pixel_index(x_tr) if task == "pixel" else squares(x_tr)
        y_te = pixel_index(c) if task == "pixel" else squares(c)
        return TaskData(
            x_tr,
            y_tr,
            c,
            y_te,
            np.full(len(x_tr), ""),
            blank,
        )
    clean = np.concatenate([squares(c), onehots(c)])
    rng = np.random.default_rng(2000 + seed)
    noisy = np.clip(clean + rng.normal(0, FULL_NOISE_SIGMA, clean.shape), 0, 1).astype(np.float32)
    kinds = np.array(["square"] * len(c) + ["onehot"] * len(c))
    targets = np.concatenate([c, c])
    return TaskData(
        np.concatenate([clean, noisy]),
        np.concatenate([targets, targets]),
        clean,
        targets,
        np.concatenate([kinds, kinds]),
        kinds,
    )


def carve_validation(
    d: TaskData, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move a seeded `fraction` of the training set into a validation set (in place on `d`):
    what configurations and epochs are chosen on, so the test set is never used to choose."""
    n = len(d.x_train)
    perm = np.random.default_rng(10_000 + seed).permutation(n)
    n_val = max(1, round(fraction * n))
    v, t = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val = (d.x_train[v], d.y_train[v], d.kinds_train[v])
    d.x_train, d.y_train, d.kinds_train = d.x_train[t], d.y_train[t], d.kinds_train[t]
    return val
