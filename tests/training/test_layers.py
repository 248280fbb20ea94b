"""Coordinate layers in 1, 2 and 3 dimensions (training/layers.py): values and conventions, the
known port bugs (each beside a test that fails on it), shapes, dtype and device, groups,
gradients, the upsample block, dynamic-shape ONNX export, and the docs page's example."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.export import IR_VERSION, OPSET
from training.layers import (
    AddCoords,
    AddCoords1d,
    AddCoords2d,
    AddCoords3d,
    CoordConv1d,
    CoordConv2d,
    CoordConv3d,
    CoordUpsample1d,
    CoordUpsample2d,
    CoordUpsample3d,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "layers.md"
ADD: dict[int, type[AddCoords1d | AddCoords2d | AddCoords3d]] = {
    1: AddCoords1d,
    2: AddCoords2d,
    3: AddCoords3d,
}
CONV: dict[int, type[CoordConv1d | CoordConv2d | CoordConv3d]] = {
    1: CoordConv1d,
    2: CoordConv2d,
    3: CoordConv3d,
}
UP: dict[int, type[CoordUpsample1d | CoordUpsample2d | CoordUpsample3d]] = {
    1: CoordUpsample1d,
    2: CoordUpsample2d,
    3: CoordUpsample3d,
}
# Odd and all different, so a swapped axis or an off-centre r cannot hide.
ODD = {1: (7,), 2: (5, 7), 3: (3, 5, 7)}
NDIMS = [1, 2, 3]
Layer = Callable[[torch.Tensor], torch.Tensor]


def ramp(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The convention, written out independently of the layer: i / (n - 1) scaled to [-1, 1]."""
    return torch.tensor([(2 * i - (n - 1)) / max(n - 1, 1) for i in range(n)], dtype=dtype)


def expected_coords(sizes: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(ndim, *sizes): x along the last axis, then y along the one before, z before that."""
    ndim = len(sizes)
    channels = []
    for k in range(ndim):
        axis = ndim - 1 - k
        shape = [1] * ndim
        shape[axis] = -1
        channels.append(ramp(sizes[axis], dtype).view(shape).expand(sizes))
    return torch.stack(channels)


# --- The 2-D layer's original tests (AddCoords is AddCoords2d) ---------------------------------


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


def test_exports_to_onnx_with_dynamic_batch_height_and_width() -> None:
    shapes = [(1, 1, 3, 3), (4, 1, 6, 11), (2, 1, 64, 64)]
    export_and_compare(AddCoords(with_r=True), torch.zeros(2, 1, 5, 7), shapes, atol=1e-6)


# --- Conventions, in every dimension ----------------------------------------------------------


def test_addcoords_is_the_2d_layer() -> None:
    assert AddCoords is AddCoords2d


@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("ndim", NDIMS)
def test_shapes_and_channel_order(ndim: int, with_r: bool) -> None:
    inp = torch.randn(2, 3, *ODD[ndim])
    layer = ADD[ndim](with_r=with_r)
    out = layer(inp)
    assert out.shape == (2, 3 + ndim + with_r, *ODD[ndim])
    assert layer.added_channels == ndim + with_r
    assert torch.equal(out[:, :3], inp)  # the input first, unchanged
    check_each_coordinate_varies_along_its_own_axis(layer, ndim)


def check_each_coordinate_varies_along_its_own_axis(layer: Layer, ndim: int) -> None:
    """Channel k after the input's (x, y, z) is the ramp of axis -1 - k (W, H, D), the same at
    every position of the other axes and in every batch element."""
    out = layer(torch.zeros(2, 1, *ODD[ndim]))
    want = expected_coords(ODD[ndim])
    for k in range(ndim):
        assert torch.equal(out[0, 1 + k], want[k]), f"channel {'xyz'[k]} is on the wrong axis"
        assert torch.equal(out[1, 1 + k], want[k])


def test_exact_values_on_a_non_square_input() -> None:
    check_axes(AddCoords2d())


def check_axes(layer: Layer) -> None:
    """H=3, W=5: x is [-1, -0.5, 0, 0.5, 1] along every row, y is [-1, 0, 1] down every column."""
    out = layer(torch.zeros(1, 1, 3, 5))
    x, y = out[0, 1], out[0, 2]
    assert x.shape == (3, 5) and y.shape == (3, 5)
    for row in x:
        assert row.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    for column in y.T:
        assert column.tolist() == [-1.0, 0.0, 1.0]


def swapped_axes(x: torch.Tensor) -> torch.Tensor:
    """The ports that call the rows "x" (`b, c, x_dim, y_dim = input.shape`): their x channel
    varies down the rows. On a square input nothing shows."""
    out = AddCoords2d()(x)
    c = x.shape[1]
    return torch.cat([x, out[:, c + 1 : c + 2], out[:, c : c + 1]], dim=1)


def test_the_axes_check_fails_on_the_swapped_axes_bug() -> None:
    with pytest.raises(AssertionError):
        check_axes(swapped_axes)
    with pytest.raises(AssertionError):
        check_each_coordinate_varies_along_its_own_axis(swapped_axes, 2)


@pytest.mark.parametrize("ndim", NDIMS)
def test_r_is_the_distance_from_the_centre(ndim: int) -> None:
    check_r_centred(ADD[ndim](with_r=True), ndim)


def check_r_centred(layer: Layer, ndim: int) -> None:
    """On an odd-sized input, r is exactly 0 at the centre and nowhere else, equals its flip
    along each axis, and is the norm of the coordinate channels (|x| in 1-D)."""
    sizes = ODD[ndim]
    out = layer(torch.zeros(1, 1, *sizes))[0]
    coords, r = out[1 : 1 + ndim], out[1 + ndim]
    centre = tuple(n // 2 for n in sizes)
    assert r[centre] == 0
    assert (r == 0).sum() == 1
    for axis in range(ndim):
        assert torch.equal(r, r.flip(axis)), f"r is not symmetric along axis {axis}"
    want = coords[0].abs() if ndim == 1 else coords.square().sum(0).sqrt()
    torch.testing.assert_close(r, want, rtol=0, atol=1e-7)
    corner = tuple(0 for _ in sizes)
    torch.testing.assert_close(r[corner], torch.tensor(float(ndim)).sqrt())


def r_offset(x: torch.Tensor) -> torch.Tensor:
    """The widely copied port: r = sqrt((x - 0.5)^2 + (y - 0.5)^2), its zero off-centre."""
    out = AddCoords2d()(x)
    xs, ys = out[:, -2:-1], out[:, -1:]
    return torch.cat([out, torch.sqrt((xs - 0.5) ** 2 + (ys - 0.5) ** 2)], dim=1)


def test_the_r_check_fails_on_the_offset_bug() -> None:
    with pytest.raises(AssertionError):
        check_r_centred(r_offset, 2)


@pytest.mark.parametrize("ndim", NDIMS)
def test_one_layer_serves_every_size_and_a_size_one_axis_maps_to_zero(ndim: int) -> None:
    layer = ADD[ndim](with_r=True)
    for sizes in [(1,) * ndim, (2,) * ndim, ODD[ndim], (64, 1, 9)[-ndim:], (4, 33, 1)[:ndim]]:
        out = layer(torch.zeros(1, 1, *sizes))[0]
        assert torch.equal(out[1 : 1 + ndim], expected_coords(sizes)), sizes
    single = layer(torch.zeros(1, 1, *(1,) * ndim))[0, 1:]
    assert torch.equal(single, torch.zeros(ndim + 1, *(1,) * ndim))  # x, y, z and r all 0


# --- dtype and device ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ndim", NDIMS)
def test_channels_take_the_inputs_dtype(ndim: int, dtype: torch.dtype) -> None:
    sizes = ODD[ndim]
    out = ADD[ndim](with_r=True)(torch.zeros(1, 2, *sizes, dtype=dtype))[0]
    assert out.dtype == dtype
    # Half precision: computed in float32, rounded once.
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    assert torch.equal(out[2 : 2 + ndim], expected_coords(sizes, exact).to(dtype))
    centre = tuple(n // 2 for n in sizes)
    r = out[2 + ndim]
    assert r[centre] == 0 and abs(float(r[(0,) * ndim]) - ndim**0.5) < 1e-2


def test_half_precision_ramps_are_exact_past_what_the_dtype_counts() -> None:
    """bfloat16 counts exactly only to 256: the ramp is computed in float32 and rounded once,
    so it stays symmetric and matches float32's rounded."""
    layer = AddCoords2d(with_r=True)
    out = layer(torch.zeros(1, 1, 3, 301, dtype=torch.bfloat16))
    assert torch.equal(out, layer(torch.zeros(1, 1, 3, 301)).to(torch.bfloat16))
    x = out[0, 1, 0]
    assert torch.equal(x, ramp(301).to(torch.bfloat16)) and torch.equal(x, -x.flip(0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ndim", NDIMS)
def test_coordconv_runs_in_the_inputs_dtype(ndim: int, dtype: torch.dtype) -> None:
    layer = CONV[ndim](2, 4, 3, padding=1, with_r=True, dtype=dtype)
    assert layer.conv.weight.dtype == dtype
    out = layer(torch.randn(2, 2, *ODD[ndim], dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 4, *ODD[ndim])


@pytest.mark.gpu
def test_channels_are_made_on_the_inputs_cuda_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (a CPU build of torch?)")
    for ndim in NDIMS:
        inp = torch.randn(2, 3, *ODD[ndim], dtype=torch.float64)
        layer = CONV[ndim](3, 4, 3, padding=1, with_r=True, dtype=torch.float64)
        coords = layer.add_coords(inp.cuda())
        assert coords.device.type == "cuda" and coords.dtype == torch.float64
        torch.testing.assert_close(coords.cpu(), layer.add_coords(inp), rtol=0, atol=1e-12)
        half = layer.add_coords(inp.cuda().to(torch.bfloat16))
        assert half.device.type == "cuda" and half.dtype == torch.bfloat16
        want = layer(inp)
        got = layer.cuda()(inp.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_wrong_rank_or_integer_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"AddCoords3d expects a \(B, C, D, H, W\) tensor"):
        AddCoords3d()(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"AddCoords1d expects a \(B, C, L\) tensor"):
        CoordConv1d(1, 1, 1)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        AddCoords2d()(torch.zeros(1, 1, 4, 4, dtype=torch.int64))


# --- CoordConv: arguments, groups, gradients -----------------------------------------------------


@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("ndim", NDIMS)
def test_coordconv_shapes_and_gradients_flow_to_the_input(ndim: int, with_r: bool) -> None:
    layer = CONV[ndim](3, 8, 3, padding=1, with_r=with_r)
    assert layer.conv.in_channels == 3 + ndim + with_r
    x = torch.randn(2, 3, *ODD[ndim], requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 8, *ODD[ndim])
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("ndim", NDIMS)
def test_conv_arguments_are_passed_through(ndim: int) -> None:
    cin = 4 + ndim % 2  # with the coordinates, an even count for groups=2
    layer = CONV[ndim](
        cin, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False, padding_mode="reflect"
    )
    conv = layer.conv
    assert isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1])
    assert conv.in_channels == cin + ndim and conv.out_channels == 6
    assert conv.kernel_size == (3,) * ndim and conv.stride == (2,) * ndim
    assert conv.padding == (2,) * ndim and conv.dilation == (2,) * ndim
    assert conv.groups == 2 and conv.bias is None and conv.padding_mode == "reflect"
    x = torch.randn(2, cin, *(9, 8, 7)[:ndim])
    torch.testing.assert_close(layer(x), conv(ADD[ndim]()(x)), rtol=0, atol=0)
    # Positional arguments in nn.Conv2d's order, and per-axis tuples.
    two = CoordConv2d(1, 2, (1, 3), (1, 2), (0, 1), (1, 1), 1, True, "zeros")
    assert two.conv.kernel_size == (1, 3) and two.conv.stride == (1, 2)
    assert two.conv.padding == (0, 1) and two(torch.zeros(1, 1, 4, 6)).shape == (1, 2, 4, 3)


def test_groups_put_the_coordinates_in_the_last_group() -> None:
    # 4 inputs + x, y = 6 channels in 3 groups of 2: [0, 1], [2, 3], [x, y].
    layer = CoordConv2d(4, 6, 3, padding=1, groups=3)
    assert layer.conv.groups == 3 and layer.conv.weight.shape == (6, 2, 3, 3)
    a, b = layer(torch.randn(2, 4, 5, 7)), layer(torch.randn(2, 4, 5, 7))
    assert torch.equal(a[:, 4:], b[:, 4:])  # the last group sees only the coordinates
    assert not torch.allclose(a[:, :4], b[:, :4])
    # with_r adds a channel: 3 + 3 = 6 divides by 2, and by 3.
    assert CoordConv2d(3, 4, 1, groups=2, with_r=True).conv.in_channels == 6
    assert CoordConv3d(3, 6, 1, groups=3).conv.groups == 3
    assert CoordConv1d(1, 2, 1, groups=2).conv.groups == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CoordConv2d(3, 6, 3, groups=2), r"groups=2 must divide in_channels \+ 2 .* = 5"),
        (lambda: CoordConv2d(4, 6, 3, groups=2, with_r=True), r"CoordConv2d: .* 4 \+ 3 = 7"),
        (lambda: CoordConv3d(4, 4, 3, groups=2), r"CoordConv3d: .* 4 \+ 3 = 7"),
        (lambda: CoordConv1d(4, 4, 3, groups=2), r"CoordConv1d: .* 4 \+ 1 = 5"),
    ],
)
def test_groups_that_do_not_divide_are_refused_naming_the_numbers(
    make: Callable[[], nn.Module], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- The upsample block ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ndim", "mode"),
    [(1, "nearest"), (1, "linear"), (2, "nearest"), (2, "bilinear"), (3, "trilinear")],
)
def test_upsample_block_output_shape_and_gradients(ndim: int, mode: str) -> None:
    sizes = (3, 4, 5)[-ndim:]
    block = UP[ndim](3, 5, mode=mode, with_r=True)
    assert isinstance(block.upsample, nn.Upsample) and isinstance(block.conv, CONV[ndim])
    assert block.conv.conv.padding == "same"
    x = torch.randn(2, 3, *sizes, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 5, *(2 * n for n in sizes))
    torch.testing.assert_close(y, block.conv(block.upsample(x)), rtol=0, atol=0)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_upsample_block_takes_scale_kernel_and_mode() -> None:
    block = CoordUpsample2d(2, 3, scale_factor=1.5, kernel_size=4)  # even kernel: "same" still
    assert block(torch.zeros(1, 2, 4, 6)).shape == (1, 3, 6, 9)
    per_axis = CoordUpsample2d(2, 3, scale_factor=(2, 3))
    assert per_axis(torch.zeros(1, 2, 2, 3)).shape == (1, 3, 4, 9)
    # The coordinates span the upsampled grid: x along its 2 * 5 = 10 columns.
    up = CoordUpsample2d(1, 1, with_r=True)
    grid = up.conv.add_coords(up.upsample(torch.zeros(1, 1, 3, 5)))
    assert torch.equal(grid[0, 1, 0], ramp(10))
    with pytest.raises(ValueError, match="mode 'bilinear' is not one of nearest"):
        CoordUpsample3d(1, 1, mode="bilinear")


# --- ONNX export with dynamic batch and spatial sizes ----------------------------------------


def export_and_compare(
    model: nn.Module, example: torch.Tensor, shapes: Sequence[tuple[int, ...]], atol: float = 1e-5
) -> None:
    """Export `model` as training/export.py does (dynamo, opset 18, IR 9) with a dynamic batch
    and dynamic spatial axes, check the graph kept them symbolic, and check onnxruntime against
    PyTorch at every shape (max abs diff <= atol)."""
    ndim = example.dim() - 2
    # Not s0, s1, ...: those are the exporter's own symbols, and a Dim named like one of them
    # labels the wrong axis.
    names = ["length"] if ndim == 1 else ["depth", "height", "width"][-ndim:]
    dims = {0: torch.export.Dim("batch")}
    dims.update({2 + k: torch.export.Dim(name, min=2) for k, name in enumerate(names)})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamic_shapes=(dims,),
            dynamo=True,
            input_names=["x"],
            output_names=["y"],
            opset_version=OPSET,
        )
    assert program is not None
    proto = program.model_proto
    proto.ir_version = IR_VERSION
    axes = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert axes == ["batch", "", *names], f"sizes baked into the graph: {axes}"
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        got = session.run(None, {"x": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=str(shape))


# Batch and every spatial size change between runs, a size-1 axis included.
EXPORT_SHAPES: dict[int, list[tuple[int, ...]]] = {
    1: [(1, 3, 5), (4, 3, 17), (2, 3, 1)],
    2: [(1, 3, 3, 5), (4, 3, 8, 11), (3, 3, 1, 6), (2, 3, 16, 16)],
    3: [(1, 3, 3, 4, 5), (3, 3, 6, 2, 7), (2, 3, 1, 5, 1)],
}


@pytest.mark.parametrize("ndim", NDIMS)
def test_coordconv_exports_with_dynamic_batch_and_spatial_sizes(ndim: int) -> None:
    torch.manual_seed(0)
    layer = CONV[ndim](3, 4, 3, padding=1, with_r=True)
    example = torch.zeros(2, 3, *(4, 5, 6)[-ndim:])
    export_and_compare(layer, example, EXPORT_SHAPES[ndim])


@pytest.mark.parametrize(("ndim", "mode"), [(1, "linear"), (2, "nearest"), (3, "trilinear")])
def test_upsample_block_exports_with_dynamic_batch_and_spatial_sizes(ndim: int, mode: str) -> None:
    torch.manual_seed(0)
    block = UP[ndim](3, 4, mode=mode, with_r=True)
    example = torch.zeros(2, 3, *(4, 5, 6)[-ndim:])
    export_and_compare(block, example, EXPORT_SHAPES[ndim])


class LinspaceCoords(nn.Module):
    """The hard-coded-size bug: correct in eager mode at every size, but `linspace` makes the
    dynamo exporter fix H and W at the example's, silently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xs = torch.linspace(-1, 1, w).view(1, 1, 1, -1).expand(b, 1, h, w)
        ys = torch.linspace(-1, 1, h).view(1, 1, -1, 1).expand(b, 1, h, w)
        return torch.cat([x, xs, ys], dim=1)


def test_the_export_check_fails_on_the_hard_coded_size_bug() -> None:
    check_axes(LinspaceCoords())  # eager mode cannot tell
    with pytest.raises(AssertionError, match="sizes baked into the graph"):
        export_and_compare(LinspaceCoords(), torch.zeros(2, 3, 5, 7), EXPORT_SHAPES[2])


# --- The docs page -------------------------------------------------------------------------------


def test_the_docs_examples_run_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.M | re.S)
    assert blocks, f"no python example in {DOCS}"
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    assert "torch.Size([4, 16, 24, 40])" in printed and "torch.Size([4, 8, 48, 80])" in printed
