"""AddCoords and CoordConv2d: values, shapes, dtype, and dynamic-shape ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.layers import AddCoords, CoordConv2d


def test_channels_are_appended_and_corners_are_plus_minus_one() -> None:
    out = AddCoords()(torch.zeros(2, 3, 5, 7))
    assert out.shape == (2, 5, 5, 7)
    x, y = out[0, 3], out[0, 4]
    assert x[0, 0] == -1 and x[0, -1] == 1 and x[-1, 0] == -1
    assert y[0, 0] == -1 and y[-1, 0] == 1 and y[0, -1] == -1


def test_x_varies_along_columns_and_y_along_rows() -> None:
    out = AddCoords()(torch.zeros(1, 1, 4, 6))
    x, y = out[0, 1], out[0, 2]
    assert torch.allclose(x[0], torch.linspace(-1, 1, 6))
    assert torch.all(x == x[0])  # every row identical
    assert torch.allclose(y[:, 0], torch.linspace(-1, 1, 4))
    assert torch.all(y.T == y[:, 0])  # every column identical


def test_input_channels_are_kept_unchanged() -> None:
    inp = torch.randn(2, 3, 8, 8)
    assert torch.equal(AddCoords(with_r=True)(inp)[:, :3], inp)


def test_r_is_zero_at_centre_of_odd_input_and_symmetric() -> None:
    r = AddCoords(with_r=True)(torch.zeros(1, 1, 7, 9))[0, 3]
    assert r[3, 4] == 0  # the exact centre
    assert torch.allclose(r, r.flip(0)) and torch.allclose(r, r.flip(1))
    assert torch.isclose(r[0, 0], torch.tensor(2.0).sqrt())
    # The -0.5 offset bug of some ports would put the zero elsewhere.
    assert torch.argmin(r).item() == 3 * 9 + 4


def test_dtype_follows_input() -> None:
    out = AddCoords(with_r=True)(torch.zeros(1, 1, 3, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert AddCoords()(torch.zeros(1, 1, 3, 3, dtype=torch.float16)).dtype == torch.float16


def test_single_pixel_input_maps_to_the_centre() -> None:
    out = AddCoords(with_r=True)(torch.zeros(1, 1, 1, 1))
    assert torch.equal(out[0, 1:], torch.zeros(3, 1, 1))


def test_coordconv2d_shapes_and_gradients() -> None:
    layer = CoordConv2d(3, 8, 3, padding=1, with_r=True)
    assert layer.conv.in_channels == 6
    x = torch.randn(2, 3, 10, 12, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 8, 10, 12)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_exports_to_onnx_with_dynamic_batch_height_and_width(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = AddCoords(with_r=True).eval()
    dims = {
        0: torch.export.Dim("batch"),
        2: torch.export.Dim("height", min=2),
        3: torch.export.Dim("width", min=2),
    }
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 1, 5, 7),),
        dynamic_shapes=({**dims},),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        opset_version=18,
    )
    assert program is not None
    path = tmp_path / "addcoords.onnx"
    program.model_proto.ir_version = 9
    import onnx

    onnx.save_model(program.model_proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 3, 3), (4, 1, 6, 11), (2, 1, 64, 64)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        got = session.run(None, {"x": x})[0]
        want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (shape[0], 4, shape[2], shape[3])
        np.testing.assert_allclose(got, want, atol=1e-6)
