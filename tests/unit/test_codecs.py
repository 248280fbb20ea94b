"""Property tests for the service's codecs: round trips, and nothing but BadRequest on junk."""

from __future__ import annotations

import base64
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.dataplane import codecs
from service.errors import BadRequest

images = hnp.arrays(np.float32, (64, 64), elements=st.floats(0, 1, width=32))


@given(images)
@settings(max_examples=40, deadline=None)
def test_png_round_trip_is_within_half_a_grey_level(image) -> None:
    back = codecs.decode_png(codecs.encode_png(image))
    assert back.shape == (64, 64) and back.dtype == np.float32
    assert np.abs(back - image).max() <= 0.5 / 255 + 1e-6


@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.just(64), st.just(64)),
        elements=st.floats(0, 1, width=32),
    )
)
@settings(max_examples=30, deadline=None)
def test_npy_round_trip_is_exact(batch) -> None:
    np.testing.assert_array_equal(codecs.decode_npy(codecs.encode_npy(batch)), batch)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_junk_bytes_only_ever_raise_bad_request(blob) -> None:
    for decode in (codecs.decode_png, codecs.decode_npy):
        with contextlib.suppress(BadRequest):
            decode(blob)
    with contextlib.suppress(BadRequest):
        codecs.decode_png_b64(base64.b64encode(blob).decode())


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=100, deadline=None)
def test_corrupted_pngs_only_ever_raise_bad_request(noise) -> None:
    png = bytearray(codecs.encode_png(np.full((64, 64), 0.5, np.float32)))
    start = len(png) // 3
    png[start : start + len(noise)] = noise
    try:
        out = codecs.decode_png(bytes(png))
        assert out.shape == (64, 64)
    except BadRequest:
        pass


coords_ok = st.lists(st.tuples(st.floats(0, 63), st.floats(0, 63)), min_size=1, max_size=20)


@given(coords_ok)
def test_valid_coordinates_are_accepted_unchanged(points) -> None:
    arr = codecs.check_coords_array(codecs.parse_coords([list(p) for p in points]))
    np.testing.assert_allclose(arr, np.asarray(points, np.float32))


@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 <= v <= 63))
def test_any_coordinate_off_the_canvas_is_refused(value) -> None:
    with pytest.raises(BadRequest, match=r"coords\[1\]"):
        codecs.check_coords_array(codecs.parse_coords([[1, 1], [value, 5]]))


@given(
    images, st.integers(0, 63), st.integers(0, 63), st.sampled_from([np.nan, np.inf, -0.01, 1.01])
)
def test_images_with_a_bad_pixel_are_refused(image, y, x, bad) -> None:
    batch = image[None].copy()
    batch[0, y, x] = bad
    with pytest.raises(BadRequest, match=r"images\[0\]"):
        codecs.check_images(batch)
