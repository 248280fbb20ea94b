"""Coordinate channels and CoordConv layers in 1, 2 and 3 dimensions (Liu et al., 2018, section 4).

`AddCoords{1,2,3}d` append coordinate channels to a (B, C, *spatial) input; `CoordConv{1,2,3}d`
are `AddCoords` followed by the matching `torch.nn.Conv{1,2,3}d`; `CoordUpsample{1,2,3}d` are an
`nn.Upsample` followed by a CoordConv with "same" padding, the usual replacement in decoders for a
transposed convolution and its checkerboard artefacts. `AddCoords` is the 2-D layer's original
name, kept as an alias of `AddCoords2d`.

Conventions (one rule for every dimension; docs/layers.md has them as a table):

- channels are appended after the input's, in the order x, y (2-D and 3-D), z (3-D), then r
  (with_r=True);
- x varies along the LAST axis (columns, W or L), y along the second to last (rows, H), z along
  the third to last (depth, D);
- each coordinate is i / (n - 1) scaled to [-1, 1]: -1 at index 0, +1 at index n - 1, computed as
  (2i - (n - 1)) / (n - 1); an axis of size 1 maps to 0, its centre (no division by zero);
- r is the distance from the centre: |x| in 1-D, sqrt(x^2 + y^2) in 2-D, sqrt(x^2 + y^2 + z^2)
  in 3-D; exactly 0 at the centre element of an odd-sized input and symmetric under flips.
  (Several published ports compute r from coordinates offset by -0.5, which puts its zero
  off-centre, or swap x and y, which only shows on non-square inputs.)

The channels are built from the input tensor with `arange` on its own (symbolic) sizes, so every
layer exports to ONNX with dynamic batch and spatial sizes; no numpy, no `linspace` (which the
dynamo exporter silently freezes), no sizes baked in as Python constants. They take the input's
dtype and device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

__all__ = [
    "AddCoords",
    "AddCoords1d",
    "AddCoords2d",
    "AddCoords3d",
    "CoordConv1d",
    "CoordConv2d",
    "CoordConv3d",
    "CoordUpsample1d",
    "CoordUpsample2d",
    "CoordUpsample3d",
]

# One size argument of torch.nn.ConvNd: an int for every axis, or one per axis.
_Size = int | tuple[int, ...]

# The input layout each dimension expects, for error messages.
_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _ramp(n: torch.SymInt | int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 .. n-1 mapped linearly onto [-1, 1], in `dtype` on `like`'s device.

    Written as (2i - last) / last with last = n - 1 taken from the tensor itself, so no size is
    baked in (no Python int from the shape) and a single element maps to 0, the centre, instead
    of dividing by zero.
    """
    i = torch.arange(n, device=like.device).to(dtype)  # type: ignore[arg-type]
    last = i[-1]
    return (2 * i - last) / last.clamp_min(1)


def _with_coords(x: torch.Tensor, ndim: int, with_r: bool) -> torch.Tensor:
    """`x` (B, C, *spatial) with `ndim` coordinate channels (x, y, z: last axis first) and, if
    `with_r`, their distance from the centre appended along the channels."""
    if x.dim() != ndim + 2:
        raise ValueError(
            f"AddCoords{ndim}d expects a (B, C, {_AXES[ndim]}) tensor, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"AddCoords{ndim}d expects a floating-point tensor, got {x.dtype}")
    # Half precision computes in float32 and rounds once at the end: float16 and bfloat16 count
    # exactly only to 2048 and 256, so 2i - last and r would be off on larger inputs.
    work = x.dtype if x.dtype.itemsize >= 4 else torch.float32
    size = (x.shape[0], 1, *x.shape[2:])  # symbolic sizes under export, never Python constants
    coords = []
    for k in range(ndim):
        axis = x.dim() - 1 - k  # x: the last axis, y: the one before, z: the one before that
        view = [1] * x.dim()
        view[axis] = -1
        coords.append(_ramp(x.shape[axis], x, work).view(view).expand(size))
    extra = list(coords)
    if with_r:
        # Summed pairwise rather than with sum(), whose leading 0 + would add a node to the graph.
        squares = coords[0] * coords[0]
        for c in coords[1:]:
            squares = squares + c * c
        extra.append(torch.sqrt(squares))
    if work != x.dtype:
        extra = [c.to(x.dtype) for c in extra]
    return torch.cat([x, *extra], dim=1)


class _AddCoordsNd(nn.Module):
    """Shared by AddCoords1d/2d/3d: the rule is `_with_coords`, only the dimension differs."""

    ndim: ClassVar[int]

    def __init__(self, with_r: bool = False) -> None:
        super().__init__()
        self.with_r = with_r

    @property
    def added_channels(self) -> int:
        """How many channels forward appends: one per axis, plus r."""
        return self.ndim + int(self.with_r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_coords(x, self.ndim, self.with_r)

    def extra_repr(self) -> str:
        return f"with_r={self.with_r}"


class AddCoords1d(_AddCoordsNd):
    """(B, C, L) -> (B, C + 1 (+1 with_r), L): appends [x(, r)].

    x varies along L, from -1 at index 0 to +1 at index L - 1 (i / (L - 1) scaled to [-1, 1]; 0
    when L == 1); r = |x|. Dtype and device follow the input.
    """

    ndim = 1


class AddCoords2d(_AddCoordsNd):
    """(B, C, H, W) -> (B, C + 2 (+1 with_r), H, W): appends [x, y(, r)].

    x varies along W (the columns, the last axis), y along H (the rows), each from -1 at index 0
    to +1 at the last index (i / (n - 1) scaled to [-1, 1]; 0 for a size-1 axis);
    r = sqrt(x^2 + y^2), 0 at the centre of an odd-sized input. Dtype and device follow the input.
    """

    ndim = 2


class AddCoords3d(_AddCoordsNd):
    """(B, C, D, H, W) -> (B, C + 3 (+1 with_r), D, H, W): appends [x, y, z(, r)].

    x varies along W (the last axis), y along H, z along D (depth), each from -1 at index 0 to +1
    at the last index (i / (n - 1) scaled to [-1, 1]; 0 for a size-1 axis);
    r = sqrt(x^2 + y^2 + z^2), 0 at the centre of an odd-sized input. Dtype and device follow the
    input.
    """

    ndim = 3


AddCoords = AddCoords2d  # the original name of the 2-D layer, used by training.nets

_ConvT = TypeVar("_ConvT", nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _CoordConvNd(nn.Module, Generic[_ConvT]):
    """Shared by CoordConv1d/2d/3d: `add_coords`, then `conv` with the extra input channels.

    The arguments are torch.nn.ConvNd's, passed through unchanged, except that the convolution
    gets in_channels + the coordinate channels. Grouped convolutions see the coordinate channels
    as ordinary input channels appended after the caller's, so they fall in the LAST group(s):
    with groups > 1 only those groups see positions. (in_channels + added channels) must be
    divisible by groups; anything else is refused with a ValueError naming the numbers.
    """

    _add_coords_type: ClassVar[type[_AddCoordsNd]]
    _conv_type: Callable[..., _ConvT]
    add_coords: _AddCoordsNd
    conv: _ConvT

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: str | _Size = 0,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        with_r: bool = False,
    ) -> None:
        super().__init__()
        self.add_coords = self._add_coords_type(with_r)
        extra = self.add_coords.added_channels
        total = in_channels + extra
        if groups > 0 and total % groups:  # groups <= 0: nn.ConvNd's own message says why
            raise ValueError(
                f"{type(self).__name__}: groups={groups} must divide in_channels + {extra} "
                f"coordinate channels = {in_channels} + {extra} = {total}; the coordinate "
                "channels are input channels of the convolution, appended after yours"
            )
        self.conv = self._conv_type(
            total,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.add_coords(x))


class CoordConv1d(_CoordConvNd[nn.Conv1d]):
    """AddCoords1d, then nn.Conv1d(in_channels + 1 (+1 with_r), out_channels, ...).

    Takes nn.Conv1d's arguments (passed through) and keyword `with_r`. The x channel (and r)
    follow the input's channels; with groups > 1 they fall in the last group, and
    (in_channels + 1 (+1)) % groups must be 0, else ValueError.
    """

    _add_coords_type = AddCoords1d
    _conv_type = nn.Conv1d


class CoordConv2d(_CoordConvNd[nn.Conv2d]):
    """AddCoords2d, then nn.Conv2d(in_channels + 2 (+1 with_r), out_channels, ...).

    Takes nn.Conv2d's arguments (passed through) and keyword `with_r`. The x (along W), y (along
    H) channels (and r) follow the input's channels; with groups > 1 they fall in the last
    group(s), and (in_channels + 2 (+1)) % groups must be 0, else ValueError.
    """

    _add_coords_type = AddCoords2d
    _conv_type = nn.Conv2d


class CoordConv3d(_CoordConvNd[nn.Conv3d]):
    """AddCoords3d, then nn.Conv3d(in_channels + 3 (+1 with_r), out_channels, ...).

    Takes nn.Conv3d's arguments (passed through) and keyword `with_r`. The x (along W), y (along
    H), z (along D) channels (and r) follow the input's channels; with groups > 1 they fall in the
    last group(s), and (in_channels + 3 (+1)) % groups must be 0, else ValueError.
    """

    _add_coords_type = AddCoords3d
    _conv_type = nn.Conv3d


class _CoordUpsampleNd(nn.Module):
    """Shared by CoordUpsample1d/2d/3d: `upsample` (nn.Upsample), then `conv`, a CoordConv with
    "same" padding, so the output is the upsampled size and the coordinates span the upsampled
    grid. Resize-then-convolve avoids the checkerboard artefacts of transposed convolutions
    (Odena et al., 2016)."""

    _coordconv_type: ClassVar[type[_CoordConvNd[Any]]]
    _modes: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale_factor: float | tuple[float, ...] = 2,
        mode: str = "nearest",
        kernel_size: _Size = 3,
        *,
        with_r: bool = False,
        align_corners: bool | None = None,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if mode not in self._modes:
            raise ValueError(
                f"{type(self).__name__}: mode {mode!r} is not one of {', '.join(self._modes)}"
            )
        self.upsample = nn.Upsample(
            scale_factor=scale_factor, mode=mode, align_corners=align_corners
        )
        self.conv = self._coordconv_type(
            in_channels,
            out_channels,
            kernel_size,
            padding="same",
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
            with_r=with_r,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.upsample(x))


class CoordUpsample1d(_CoordUpsampleNd):
    """(B, C_in, L) -> (B, C_out, floor(L * scale_factor)): nn.Upsample, then CoordConv1d with
    "same" padding. mode: nearest, nearest-exact or linear."""

    _coordconv_type = CoordConv1d
    _modes = ("nearest", "nearest-exact", "linear")


class CoordUpsample2d(_CoordUpsampleNd):
    """(B, C_in, H, W) -> (B, C_out, floor(H * s), floor(W * s)): nn.Upsample, then CoordConv2d
    with "same" padding. mode: nearest, nearest-exact, bilinear or bicubic."""

    _coordconv_type = CoordConv2d
    _modes = ("nearest", "nearest-exact", "bilinear", "bicubic")


class CoordUpsample3d(_CoordUpsampleNd):
    """(B, C_in, D, H, W) -> (B, C_out, D * s, H * s, W * s) (each floored): nn.Upsample, then
    CoordConv3d with "same" padding. mode: nearest, nearest-exact or trilinear."""

    _coordconv_type = CoordConv3d
    _modes = ("nearest", "nearest-exact", "trilinear")
