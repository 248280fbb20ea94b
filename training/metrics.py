"""Metrics on numpy arrays, shared by training, export verification and the service's tests, and
the goals a run is judged by (the paper's claims: 100% accuracy, perfect rendering, exact
locating), with the one definition of time to goal."""

from __future__ import annotations

from typing import Any

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


# What IoU at threshold 0.5 cannot see: the values on either side of it. A render model that
# paints the true square bright and a grey 0.33 wash everywhere else scores IoU 1.000 (a 1-epoch
# run of `coordconv train --task render --epochs 1` does exactly that), so render models are also
# judged on the values they paint (bounds in the same units as the images, [0, 1]):
BACKGROUND_MEAN_MAX = 0.05  # mean value outside the true square: the shipped models paint ~4e-6
SQUARE_MEAN_MIN = 0.95  # mean value inside it: the shipped CoordConv models paint >= 0.9999
# The largest per-pixel error is recorded but has no bound: one pixel at a square's edge can sit
# near the threshold in an honest model (0.40 in the shipped render version 1, whose background
# mean is 3e-6) while the grey wash's largest error is only 0.33, so only the means separate them.


def render_values(pred: npt.ArrayLike, truth: npt.ArrayLike) -> dict[str, float]:
    """Value checks of (N, H, W) rendered images against binary `truth` masks: the mean value
    outside the true squares (`background_mean`), inside them (`square_mean`), and the largest
    absolute per-pixel error (`max_pixel_error`), over every pixel of every image."""
    p = np.asarray(pred, np.float32)
    inside = np.asarray(truth) > 0.5
    n_in = int(inside.sum())
    n_out = inside.size - n_in
    total = float(p.sum(dtype=np.float64))
    square = float(p.sum(where=inside, dtype=np.float64))
    return {
        "background_mean": (total - square) / n_out if n_out else 0.0,
        "square_mean": square / n_in if n_in else 1.0,
        "max_pixel_error": float(np.abs(p - inside).max()) if p.size else 0.0,
    }


def render_value_problem(
    values: dict[str, float], iou: float | None = None, square: bool = True
) -> str | None:
    """None when `values` (render_values) are within the bounds; otherwise one line saying
    which bound fails and by how much, e.g. "background mean 0.33 > 0.05 (IoU 1.000 at 0.5 hides
    it)". `square=False` checks the background alone (export: a baseline that misses squares is
    exported as the poor model it is, but nothing paints a wash over the whole canvas)."""
    problems = []
    if values["background_mean"] > BACKGROUND_MEAN_MAX:
        problems.append(f"background mean {values['background_mean']:.2f} > {BACKGROUND_MEAN_MAX}")
    if square and values["square_mean"] < SQUARE_MEAN_MIN:
        problems.append(f"square mean {values['square_mean']:.2f} < {SQUARE_MEAN_MIN}")
    if not problems:
        return None
    line = "; ".join(problems)
    if iou is not None:
        line += f" (IoU {iou:.3f} at {THRESHOLD}{' hides it' if iou >= 0.99 else ''})"
    return line


# -- the goals -----------------------------------------------------------------------------------

# The goals of the paper's CoordConv rows, judged on the test set. Render is also judged on the
# values it paints (training.metrics.render_values): IoU at threshold 0.5 alone gives 1.000 to a
# model that paints the square and a grey wash everywhere else.
GOALS = {
    "pixel": "accuracy = 100%",
    "render": (
        f"IoU >= 0.99 (background mean <= {BACKGROUND_MEAN_MAX}, square mean >= {SQUARE_MEAN_MIN})"
    ),
    "locate": "error <= 0.5 px",
    "coordconv906": "100% exact",
}
# A model that misses these on its own training set did not fit, so its test failure says nothing
# about generalisation.
FIT = {"pixel": 0.90, "render": 0.80, "locate": 1.0}

PRIMARY = {"pixel": "accuracy", "render": "iou", "locate": "mean_error_px"}


def primary_metric(task: str, arch: str, onehot_only: bool = False) -> str:
    """The metric a run is judged and plotted by: on one-hot pixels alone (the 906-parameter
    regressor, and the conv regressor in the paper's setup), the share located exactly."""
    return "exact" if arch == "coordconv906" or onehot_only else PRIMARY[task]


def format_metric(task: str, arch: str, value: float) -> str:
    """One value of a run's primary metric, as the tables show it."""
    if arch == "coordconv906":
        return f"{100 * value:.1f}% exact"
    if task == "pixel":
        return f"{100 * value:.1f}%"
    if task == "render":
        return f"IoU {value:.3f}"
    return f"{value:.2f} px"


def higher_is_better(metric: str) -> bool:
    return not metric.startswith("mean_error")


def to_goal(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """Epochs and training seconds until the test metric first reached the goal (None: never
    within the run's epochs). The one definition of time to goal: every table and ratio uses it
    (experiments.report's tables and ratios)."""
    for h in history:
        if h["goal"]:
            return {"epochs": h["epoch"], "seconds": h["time_s"]}
    return None


def to_best(history: list[dict[str, Any]], higher: bool) -> dict[str, float] | None:
    """Epochs and training seconds until the best test metric of the run (the first epoch that
    reached it): what a baseline that never reaches the goal is timed by."""
    if not history:
        return None
    best = max(history, key=lambda h: h["test"] if higher else -h["test"])
    return {"epochs": best["epoch"], "seconds": best["time_s"], "test": best["test"]}


def goal_refused(task: str, m: dict[str, float]) -> str | None:
    """Why a render model whose IoU meets the goal still misses it: one line naming the
    value bound it fails (render_value_problem), e.g. "background mean 0.20 >
    0.05 (IoU 1.000 at 0.5 hides it)"; None otherwise, and for metrics recorded before the value
    checks existed."""
    if task != "render" or "background_mean" not in m or m["iou"] < 0.99:
        return None  # (an IoU below the goal says why on its own)
    return render_value_problem(m, m["iou"])


def goal_met(task: str, m: dict[str, float], arch: str = "coordconv") -> bool:
    if task == "pixel":
        return m["accuracy"] >= 1.0
    if task == "render":
        return m["iou"] >= 0.99 and goal_refused(task, m) is None
    if arch == "coordconv906" or "mean_error_px_square" not in m:
        return m["exact"] >= 1.0  # one-hot pixels alone: every one located exactly
    return max(m["mean_error_px_square"], m["mean_error_px_onehot"]) <= 0.5


def fits(task: str, m: dict[str, float]) -> bool:
    """Did the model fit its training set (see FIT)?"""
    value = m[PRIMARY[task]]
    return value <= FIT[task] if task == "locate" else value >= FIT[task]
