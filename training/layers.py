"""AddCoords and CoordConv2d (Liu et al., 2018, section 4).

AddCoords appends coordinate channels to a (B, C, H, W) input: `x` varies along the columns and is
-1 at the left edge and +1 at the right (i / (W - 1) scaled to [-1, 1]); `y` does the same along
the rows; the optional `r = sqrt(x^2 + y^2)` is the distance from the centre, exactly 0 at the
centre pixel of an odd-sized input and symmetric under flips. (Several published ports compute
`r` from coordinates offset by -0.5, which puts its zero in a corner.)

The channels are built from the input tensor with `arange` on its own (symbolic) sizes, so the
layer exports to ONNX with dynamic height, width and batch; no numpy, no `linspace` (which the
dynamo exporter silently freezes), no sizes baked in as Python constants.
"""

from __future__ import annotations

import torch
from torch import nn


def _ramp(n: torch.SymInt | int, like: torch.Tensor) -> torch.Tensor:
    """0 .. n-1 mapped linearly onto [-1, 1], in `like`'s dtype and device.

    Written as (2i - last) / last with last = n - 1 taken from the tensor itself, so no size is
    baked in (no Python int from the shape) and a single element maps to 0, the centre, instead
    of dividing by zero.
    """
    i = torch.arange(n, device=like.device).to(like.dtype)  # type: ignore[arg-type]
    last = i[-1]
    return (2 * i - last) / last.clamp_min(1)


class AddCoords(nn.Module):
    """(B, C, H, W) -> (B, C + 2 (+ 1 with_r), H, W): appends channels [x, y(, r)]."""

    def __init__(self, with_r: bool = False) -> None:
        super().__init__()
        self.with_r = with_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xs = _ramp(w, x).view(1, 1, 1, -1).expand(b, 1, h, w)
        ys = _ramp(h, x).view(1, 1, -1, 1).expand(b, 1, h, w)
        channels = [x, xs, ys]
        if self.with_r:
            channels.append(torch.sqrt(xs * xs + ys * ys))
        return torch.cat(channels, dim=1)

    def extra_repr(self) -> str:
        return f"with_r={self.with_r}"


class CoordConv2d(nn.Module):
    """A Conv2d that sees coordinate channels: AddCoords, then Conv2d(in + 2 (+1), out, ...)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        with_r: bool = False,
        stride: int = 1,
        padding: int | str = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.add_coords = AddCoords(with_r)
        extra = 3 if with_r else 2
        self.conv = nn.Conv2d(
            in_channels + extra, out_channels, kernel_size, stride, padding, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.add_coords(x))
