"""CoordConv and baseline networks for the three tasks.

Every network takes and returns pixels: coordinates in [0, 63] and images in [0, 1]. Normalisation
to [-1, 1] happens inside, so the exported ONNX graphs need no pre- or post-processing.
`forward` returns what the loss wants (logits, or pixel coordinates for `locate`); `predict`
applies the final softmax or sigmoid and is what gets exported and served.

| task   | input        | output                                  |
|--------|--------------|-----------------------------------------|
| pixel  | (B, 2) px    | (B, 64, 64) softmax over all 4096 pixels |
| render | (B, 2) px    | (B, 64, 64) per-pixel probability        |
| locate | (B, 64, 64)  | (B, 2) px                                |
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from coordconv import contract
from training.data import CANVAS
from training.layers import AddCoords, CoordConv2d

Task = Literal["pixel", "render", "locate"]
Arch = Literal["coordconv", "baseline", "coordconv906"]
TASKS: tuple[Task, ...] = contract.TASKS  # type: ignore[assignment]  # the same three names
# coordconv906: the paper's 906-parameter regressor, locate on one-hot pixels only.
ARCHS: tuple[Arch, ...] = ("coordconv", "baseline", "coordconv906")


def to_unit(coords: torch.Tensor) -> torch.Tensor:
    """Pixels [0, 63] -> [-1, 1], the scale of AddCoords' channels."""
    return coords * (2.0 / (CANVAS - 1)) - 1.0


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over all pixels of (B, H, W) logits."""
    return torch.softmax(logits.flatten(1), dim=1).view_as(logits)


def he_normal_(module: nn.Module) -> None:
    """The reference code's init (TensorFlow's `he_normal`, zero biases) on every convolution and
    linear layer of `module`: a normal of standard deviation sqrt(2 / fan_in) truncated at two
    standard deviations (TensorFlow rescales the truncated normal so its standard deviation is
    that value). Batch norm keeps its ones and zeros."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    m.bias.zero_()


def pointwise(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to a channels-last (B, H, W, C) tensor."""
    return F.linear(h, conv.weight.flatten(1), conv.bias)


class CoordNet(nn.Module):
    """Base for the networks: `predict` is `forward` plus the task's output activation."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class CoordConvPixel(CoordNet):
    """Coordinate classification (paper figure 3b): tile (x, y) over the canvas, add coordinate
    channels, then 1x1 convolutions 32, 32, 64, 64, 1. Each output pixel is a small MLP of
    (x_in, y_in, i, j), which is why it generalises to unseen regions. 7,553 parameters."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 32, 64, 64),
        offset_init: bool = True,
        torch_init: bool = True,
        unit_inputs: bool = True,
    ) -> None:
        super().__init__()
        # The tiled point in [-1, 1], the coordinate channels' scale (else raw pixels, as the
        # reference code feeds them: 4..59 beside channels in [-1, 1]).
        self.unit_inputs = unit_inputs
        first = CoordConv2d(2, widths[0], 1)
        layers: list[nn.Module] = [first, nn.ReLU()]
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.Conv2d(cin, cout, 1), nn.ReLU()]
        layers.append(nn.Conv2d(widths[-1], 1, 1))
        self.body = nn.Sequential(*layers)
        if not torch_init:
            he_normal_(self)
        if offset_init:
            # Start every first-layer unit as a function of the offset (x_in - i, y_in - j)
            # between the point and the pixel (random weights, tied in pairs): the function
            # the task needs is one of that offset, so the unseen quadrant is no different from
            # the rest. From a plain random init, 2 of 10 seeds found a solution that does not
            # carry over to the held-out quadrant (65% and 97% test accuracy; 99.6% after
            # twice the epochs). Input channels: x_in, y_in (the tiled point), then AddCoords'
            # column and row.
            with torch.no_grad():
                w = first.conv.weight
                if unit_inputs:
                    w[:, 2] = -w[:, 0]
                    w[:, 3] = -w[:, 1]
                else:  # raw x_in beside i in [-1, 1]: x_in - pixel = x_in - 31.5 (i + 1)
                    half = (CANVAS - 1) / 2
                    w[:, 2] = -half * w[:, 0]
                    w[:, 3] = -half * w[:, 1]
                    bias = first.conv.bias
                    assert bias is not None
                    bias -= half * (w[:, 0] + w[:, 1]).flatten()

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        point = to_unit(coords) if self.unit_inputs else coords
        tiled = point[:, :, None, None].expand(-1, -1, CANVAS, CANVAS)
        # A 1x1 convolution is a linear layer applied at every pixel: run the layers on a
        # channels-last (B, H, W, C) tensor with the same weights, which trains about twice as
        # fast on a CPU as the NCHW convolutions and computes the same function.
        first = self.body[0]
        assert isinstance(first, CoordConv2d)
        h = first.add_coords(tiled).permute(0, 2, 3, 1)
        for layer in self.body:
            if isinstance(layer, CoordConv2d):
                layer = layer.conv
            h = pointwise(layer, h) if isinstance(layer, nn.Conv2d) else layer(h)
        return h.squeeze(-1)

    def predict(self, coords: torch.Tensor) -> torch.Tensor:
        return spatial_softmax(self(coords))


class CoordConvRender(CoordNet):
    """Rendering (paper section 5): the pixel network's softmax map, then 3x3 convolutions
    8, 8, 16, 16, 1 that paint the 9x9 square around the chosen pixel. 11,850 parameters."""

    def __init__(
        self,
        widths: tuple[int, ...] = (8, 8, 16, 16),
        spread_init: bool = True,
        offset_init: bool = True,
        torch_init: bool = True,
        unit_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.pixel = CoordConvPixel(
            offset_init=offset_init, torch_init=torch_init, unit_inputs=unit_inputs
        )
        layers: list[nn.Module] = []
        cin = 1
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.paint = nn.Sequential(*layers)
        if not torch_init:
            he_normal_(self.paint)
        if spread_init:
            self._spread_init()

    @torch.no_grad()
    def _spread_init(self) -> None:
        """Start the painter where a square is one threshold away: random non-negative 3x3
        kernels and zero biases spread a peak by exactly one pixel per layer, so after the four
        hidden layers its support is the 9x9 square, whatever the random values; the last layer
        starts centre-only so it does not spread it further. Every weight still trains. From
        the default init some seeds settled on a square without its four corners (IoU 0.95 on
        train and test alike), which the per-pixel loss barely notices."""
        convs = [m for m in self.paint if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv.weight.abs_()
            assert conv.bias is not None
            conv.bias.zero_()
        last = convs[-1].weight
        centre = last[:, :, 1, 1].clone()
        last.zero_()
        last[:, :, 1, 1] = centre

    def forward_aux(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(render logits, pixel logits): training also supervises the pixel map (see train.py)."""
        pixel_logits = self.pixel(coords)
        peak = spatial_softmax(pixel_logits).unsqueeze(1)
        return self.paint(peak).squeeze(1), pixel_logits

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.forward_aux(coords)[0]

    def predict(self, coords: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(coords))


class CoordConvLocate(CoordNet):
    """Coordinate regression: CoordConv layers turn the image into a heatmap of 'centre here'
    logits, and a soft-argmax reads the point off as the expected (x, y) under its softmax.

    The paper's 906-parameter regressor (global max pool of a linear map) only handles one-hot
    pixels; squares need a receptive field that covers them (four 3x3 layers: 9x9) and a readout
    that is symmetric about the centre, which the soft-argmax is.
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 4,
        zero_coord_init: bool = True,
        zero_bias_init: bool = True,
        torch_init: bool = True,
        coords: bool = True,
    ) -> None:
        super().__init__()
        # coords=False: the same network without coordinate channels (a plain convolution
        # first), to measure what the heatmap and its soft-argmax owe to CoordConv.
        first: nn.Module = (
            CoordConv2d(1, width, 3, padding=1) if coords else nn.Conv2d(1, width, 3, padding=1)
        )
        layers: list[nn.Module] = [first, nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 1))
        self.body = nn.Sequential(*layers)
        self.grid = AddCoords()
        # Two starting points, each from a seed that missed without it (seeds 0..9, both splits):
        # - coordinate weights at zero: the soft-argmax reads the position off its grid, so the
        #   map has to find the object, not know where it is. From random ones, a seed learned a
        #   position-dependent bias that outshone a one-hot pixel in the held-out quadrant (88%
        #   exact there, 100% on its training set);
        # - biases at zero: a one-hot pixel is a faint input, and under random negative biases
        #   the ReLUs can drop it everywhere; one seed's heatmap never lit up for one-hot images
        #   (21 px off on train and test alike).
        if not torch_init:
            he_normal_(self)
        with torch.no_grad():
            if zero_coord_init and isinstance(first, CoordConv2d):
                first.conv.weight[:, 1:].zero_()
            if zero_bias_init:
                for m in self.modules():
                    if isinstance(m, nn.Conv2d) and m.bias is not None:
                        m.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_aux(image)[0]

    def forward_aux(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The point, and the heatmap's logits (B, H, W) that training also supervises."""
        logits = self.body(image.unsqueeze(1)).squeeze(1)
        heat = spatial_softmax(logits)
        # The coordinate channels in [-1, 1] double as the soft-argmax grid.
        xy = self.grid(heat.unsqueeze(1))[:, 1:]  # (B, 2, H, W): x and y channels
        unit = (heat.unsqueeze(1) * xy).sum(dim=(2, 3))
        return (unit + 1.0) * ((CANVAS - 1) / 2.0), logits


class DeconvNet(CoordNet):
    """The paper's baseline for pixel and render: (x, y) as a 1x1x2 input and six stride-2
    transposed convolutions (64m, 64m, 64m, 32m, 32m, 1 channels) with batch norm and ReLU between:
    1 -> 2 -> 4 -> ... -> 64. 103,585 parameters at kernel 3, m = 1."""

    def __init__(
        self, task: Task, kernel: int = 3, width: int = 1, torch_init: bool = True
    ) -> None:
        super().__init__()
        self.task = task
        chans = [2, 64 * width, 64 * width, 64 * width, 32 * width, 32 * width, 1]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
            layers.append(
                # Exactly doubles the size for odd and even kernels alike.
                nn.ConvTranspose2d(
                    cin, cout, kernel, 2, padding=(kernel - 1) // 2, output_padding=kernel % 2
                )
            )
            if i < len(chans) - 2:
                layers += [nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        if not torch_init:
            he_normal_(self)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.body(to_unit(coords)[:, :, None, None]).squeeze(1)

    def predict(self, coords: torch.Tensor) -> torch.Tensor:
        logits = self(coords)
        return spatial_softmax(logits) if self.task == "pixel" else torch.sigmoid(logits)


class ConvRegressor(CoordNet):
    """The baseline for locate: a plain CNN (3x3 convs with max pools 64 -> 4, then two dense
    layers) regressing (x, y). It has to infer position from where features land in the flattened
    map, which is the translation-invariance problem CoordConv removes."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 32, 32),
        hidden: int = 64,
        kernel: int = 3,
        width: int = 1,
        torch_init: bool = True,
    ) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the conv regressor needs an odd kernel, got {kernel}")
        layers: list[nn.Module] = []
        cin = 1
        for cout in (w * width for w in widths):
            conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
            layers += [conv, nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        side = CANVAS // 2 ** len(widths)
        layers += [
            nn.Flatten(),
            nn.Linear(cin * side * side, hidden * width),
            nn.ReLU(),
            nn.Linear(hidden * width, 2),
        ]
        self.body = nn.Sequential(*layers)
        if not torch_init:
            he_normal_(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        unit = self.body(image.unsqueeze(1))
        return (unit + 1.0) * ((CANVAS - 1) / 2.0)


class PaperRegressor(CoordNet):
    """The paper's 906-parameter CoordConv regressor (its figure 3c): AddCoords on the image, 1x1
    convolutions 8, 8, 8, 3x3 convolutions 8, 2, and a global max pool, with no activation
    anywhere. For a one-hot image the largest response sits at the hot pixel, where the coordinate
    channels say where it is: a linear read-out of (i, j) picked by a max. Squares defeat it (the
    max of a linear map over a square's interior lands on its edge), so it trains and is judged on
    one-hot pixels only."""

    def __init__(
        self, peak_init: bool = True, torch_init: bool = True, unit_output: bool = True
    ) -> None:
        super().__init__()
        # The max pool's output read as [-1, 1] over the canvas (else as pixels / 64, the
        # reference's: its MSE compares the raw output with the location / 64).
        self.unit_output = unit_output
        self.body = nn.Sequential(
            CoordConv2d(1, 8, 1),
            nn.Conv2d(8, 8, 1),
            nn.Conv2d(8, 8, 1),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 2, 3, padding=1),
        )
        if not torch_init:
            he_normal_(self)
        if peak_init:
            self._peak_at_the_pixel()

    @torch.no_grad()
    def _peak_at_the_pixel(self, gain: float = 100.0) -> None:
        """Start where gradient descent can reach the answer: a random init puts each output
        map's max in a corner (the coordinate channels outweigh a one-hot pixel), the max pool
        then passes no gradient to the image weights, and training stalls at the mean (0% exact
        on every seed tried). So flip each output channel to respond positively to a hot pixel
        and scale the first layer's image weights up: the max starts at the pixel."""
        hot = torch.zeros(1, 1, CANVAS, CANVAS)
        hot[0, 0, CANVAS // 2, CANVAS // 2] = 1.0
        response = (self.body(hot) - self.body(torch.zeros_like(hot)))[0, :, CANVAS // 2]
        sign = torch.where(response[:, CANVAS // 2] < 0, -1.0, 1.0)
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        last.weight.mul_(sign[:, None, None, None])
        last.bias.mul_(sign)
        first = self.body[0]
        assert isinstance(first, CoordConv2d)
        first.conv.weight[:, 0] *= gain
        # and answer the canvas centre for a pixel at the centre, not a value `gain` times off.
        centre = 0.0 if self.unit_output else (CANVAS - 1) / 2.0 / CANVAS
        last.bias.sub_(self.body(hot).amax(dim=(2, 3))[0] - centre)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.body(image.unsqueeze(1)).amax(dim=(2, 3))  # amax: any canvas size exports
        if self.unit_output:
            return (out + 1.0) * ((CANVAS - 1) / 2.0)
        return out * CANVAS


def build(task: Task, arch: Arch, kernel: int = 3, width: int = 1, **init: bool) -> CoordNet:
    """The network for a task and architecture; `kernel` and `width` (the paper's filter size and
    width multiplier) shape the baselines only. `init` holds the recipe's init flags
    (experiments.recipe.Settings: torch_init, offset_init, spread_init, zero_coord_init,
    zero_bias_init, peak_init), `unit_inputs` (pixel, render), `unit_output` (906) and `coords`
    (locate); a flag a network does not use is ignored, and an absent one takes the network's
    default (the `ours` recipe)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if kernel < 1 or width < 1:
        raise ValueError(f"kernel and width must be >= 1, got {kernel} and {width}")

    def pick(*names: str) -> dict[str, Any]:
        return {k: init[k] for k in names if k in init}

    if arch == "coordconv906":
        if task != "locate":
            raise ValueError("the 906-parameter regressor is a locate network (--task locate)")
        return PaperRegressor(**pick("peak_init", "torch_init", "unit_output"))
    if arch == "coordconv":
        if task == "pixel":
            return CoordConvPixel(**pick("offset_init", "torch_init", "unit_inputs"))
        if task == "render":
            return CoordConvRender(
                **pick("spread_init", "offset_init", "torch_init", "unit_inputs")
            )
        return CoordConvLocate(**pick("zero_coord_init", "zero_bias_init", "torch_init", "coords"))
    if task == "locate":
        return ConvRegressor(kernel=kernel, width=width, **pick("torch_init"))
    return DeconvNet(task, kernel=kernel, width=width, **pick("torch_init"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
