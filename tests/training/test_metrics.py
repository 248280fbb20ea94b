"""Metrics on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_iou_of_hand_made_masks() -> None:
    truth = np.zeros((1, 4, 4))
    truth[0, :2, :2] = 1  # 4 pixels
    pred = np.zeros((1, 4, 4))
    pred[0, :2, :3] = 0.9  # 6 pixels, 4 shared
    assert metrics.iou(pred, truth)[0] == pytest.approx(4 / 6)
    assert metrics.iou(truth, truth)[0] == 1.0
    assert metrics.iou(np.zeros((1, 4, 4)), truth)[0] == 0.0
    assert metrics.iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))[0] == 1.0  # both empty


def test_iou_thresholds_at_one_half() -> None:
    truth = np.ones((1, 2, 2))
    assert metrics.mean_iou(np.full((1, 2, 2), 0.5), truth) == 0.0
    assert metrics.mean_iou(np.full((1, 2, 2), 0.51), truth) == 1.0


def test_mean_error_is_euclidean_in_pixels() -> None:
    pred = np.array([[3.0, 4.0], [1.0, 1.0]])
    truth = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert metrics.errors_px(pred, truth).tolist() == [5.0, 0.0]
    assert metrics.mean_error_px(pred, truth) == 2.5


def test_accuracy_reads_argmax_as_y_times_width_plus_x() -> None:
    maps = np.zeros((2, 64, 64))
    maps[0, 20, 10] = 1  # (x=10, y=20)
    maps[1, 5, 5] = 1
    assert metrics.accuracy(maps, [20 * 64 + 10, 0]) == 0.5
