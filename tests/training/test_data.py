"""Not-so-Clevr data and splits (the README's Conventions section)."""

from __future__ import annotations

import numpy as np
import pytest

from training import data


def test_centres_cover_4_to_59_on_both_axes() -> None:
    c = data.centres()
    assert c.shape == (3136, 2) and c.dtype == np.float32
    assert c.min() == 4 and c.max() == 59
    assert len({(x, y) for x, y in c.tolist()}) == 3136


def test_square_is_9x9_binary_centred_on_x_column_y_row() -> None:
    sq = data.squares([[10, 20]])[0]
    assert sq.shape == (64, 64) and sq.sum() == 81
    rows, cols = np.nonzero(sq)
    assert (rows.min(), rows.max()) == (16, 24)  # y +- 4
    assert (cols.min(), cols.max()) == (6, 14)  # x +- 4
    assert set(np.unique(sq)) == {0.0, 1.0}


def test_square_is_clipped_at_the_canvas_edge() -> None:
    assert data.squares([[0, 63]])[0].sum() == 25


def test_onehot_sets_pixel_y_x() -> None:
    img = data.onehots([[3, 50]])[0]
    assert img.sum() == 1 and img[50, 3] == 1
    assert data.pixel_index([[3, 50]])[0] == 50 * 64 + 3


def test_points_outside_the_canvas_are_refused() -> None:
    with pytest.raises(ValueError, match="in \\[0, 63\\]"):
        data.squares([[64, 0]])
    with pytest.raises(ValueError, match="shape"):
        data.onehots([1, 2, 3])


def test_quadrant_split_is_2407_729_and_holds_out_x_and_y_above_32() -> None:
    train, test = data.split_indices("quadrant")
    assert (len(train), len(test)) == (2407, 729)
    c = data.centres()
    assert np.all((c[test] > 32).all(axis=1))
    assert not np.any((c[train] > 32).all(axis=1))


def test_uniform_split_is_2352_784_seeded_and_disjoint() -> None:
    train, test = data.split_indices("uniform", seed=0)
    assert (len(train), len(test)) == (2352, 784)
    assert len(np.intersect1d(train, test)) == 0
    assert len(np.union1d(train, test)) == 3136
    again = data.split_indices("uniform", seed=0)
    assert np.array_equal(test, again[1])
    assert not np.array_equal(test, data.split_indices("uniform", seed=1)[1])
    assert len(data.split_indices("uniform", test_fraction=0.2)[1]) == round(0.2 * 3136)


def test_bad_split_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        data.split_indices("diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_fraction"):
        data.split_indices("uniform", test_fraction=1.5)
