"""Metrics on numpy arrays, shared by training, export verification and the service's tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

THRESHOLD = 0.5


def accuracy(heatmaps: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Share of (N, H, W) maps whose argmax is the target flat index y * W + x."""
    maps = np.asarray(heatmaps)
    flat = maps.reshape(len(maps), -1)
    return float(np.mean(flat.argmax(axis=1) == np.asarray(targets)))


def iou(pred: npt.ArrayLike, truth: npt.ArrayLike, threshold: float = THRESHOLD) -> npt.NDArray:
    """Per-image intersection over union of `pred > threshold` against binary `truth`.

    Two empty masks agree perfectly (IoU 1).
    """
    p = np.asarray(pred) > threshold
    t = np.asarray(truth) > 0.5
    axes = tuple(range(1, p.ndim))
    inter = np.logical_and(p, t).sum(axis=axes)
    union = np.logical_or(p, t).sum(axis=axes)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mean_iou(pred: npt.ArrayLike, truth: npt.ArrayLike, threshold: float = THRESHOLD) -> float:
    return float(np.mean(iou(pred, truth, threshold)))


def errors_px(pred: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray:
    """Euclidean distance in pixels between (N, 2) predicted and true points."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(truth, np.float64), axis=1)


def mean_error_px(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    return float(np.mean(errors_px(pred, truth)))
