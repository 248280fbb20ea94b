"""What export wraps around a trained network for serving, not trained themselves: a point
moved to its nearest integer centre inside the graph (`NearestCentre`), the full-canvas renderer
that paints the pixel net's choice (`PaintedPixel`), the full-canvas locator that checks its
estimate against the squares around it (`RefinedLocate`), and a confidence output beside the
coordinates (`LocateWithConfidence`, `locate_confidence`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.data import CANVAS, SQUARE
from training.nets import CoordNet


def locate_confidence(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """How much to trust a located point, in [0, 1], by a round trip: draw what the answer says
    the image shows (the 9x9 square, clipped to the canvas, and the one-hot pixel at the point's
    nearest integer centre), and compare it with the image. The confidence is one minus the
    largest absolute difference of any pixel to the better-fitting of the two drawings:

    - 1 for a clean square or pixel located at the right place; about 0.8 under Gaussian noise
      of sigma 0.05 (the largest of 4096 noise values is about 4 sigma);
    - near 0 when anything in the image disagrees with the answer: a blank or white image, a
      second object, another shape or size, salt-and-pepper or heavy noise, or a point located
      a pixel off.

    Built from `arange` and comparisons only, so it exports to ONNX inside the locate graph and
    Triton serving the repository computes the same number."""
    h, w = image.shape[-2], image.shape[-1]
    cols = torch.arange(w, device=image.device).to(image.dtype)
    rows = torch.arange(h, device=image.device).to(image.dtype)
    cx = torch.round(coords[:, 0:1])  # (B, 1)
    cy = torch.round(coords[:, 1:2])
    half = (SQUARE - 1) / 2
    in_x = ((cols[None, :] - cx).abs() <= half).to(image.dtype)  # (B, W)
    in_y = ((rows[None, :] - cy).abs() <= half).to(image.dtype)  # (B, H)
    at_x = (cols[None, :] == cx).to(image.dtype)
    at_y = (rows[None, :] == cy).to(image.dtype)
    square = in_y[:, :, None] * in_x[:, None, :]
    pixel = at_y[:, :, None] * at_x[:, None, :]
    off_square = (image - square).abs().amax(dim=(1, 2))
    off_pixel = (image - pixel).abs().amax(dim=(1, 2))
    return (1.0 - torch.minimum(off_square, off_pixel)).clamp(0.0, 1.0)


class NearestCentre(CoordNet):
    """A pixel or render network that first moves a real-valued point to its nearest integer
    centre, inside the graph: the contract (a real point renders as the square at its nearest
    integer centre) then holds exactly, instead of as well as a learned boundary between
    neighbouring pixels can approximate a rounding step (94.7% of real points on the first
    full-canvas pixel model without it)."""

    def __init__(self, model: CoordNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(coords))

    def predict(self, coords: torch.Tensor) -> torch.Tensor:
        return self.model.predict(torch.round(coords))


class PaintedPixel(CoordNet):
    """Full-canvas rendering (version 2): the CoordConv pixel network picks the centre pixel (the
    part that needs CoordConv, learned), and a fixed 9x9 max-pool of its map, normalised so the
    peak is 1, paints the square around it. The max-pool pads with minus infinity, so a square
    at the border comes out clipped exactly as the data set's are; the learned painter of
    version 1, trained on the full canvas within the same budget, got 277 of the 4096 centres
    below IoU 0.99, every one of them at the border. 7,553 parameters, those of the pixel net."""

    def __init__(self, pixel: CoordNet) -> None:
        super().__init__()
        self.pixel = pixel

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.predict(coords)

    def predict(self, coords: torch.Tensor) -> torch.Tensor:
        heat = self.pixel.predict(coords)  # (B, H, W), softmax over the canvas
        peak = heat / heat.amax(dim=(1, 2), keepdim=True)
        return F.max_pool2d(peak.unsqueeze(1), SQUARE, stride=1, padding=SQUARE // 2).squeeze(1)


class RefinedLocate(CoordNet):
    """Full-canvas locating (version 2): the CoordConv network's estimate, then a round trip
    over the integer centres within `radius` pixels of it: the one whose square or pixel, drawn
    as the data set draws it (clipped at the border), differs least (L1) from the image is the
    answer. Squares cut by the border are where the network alone is least sure (a clipped
    square's visible middle is not its centre); the drawing knows the clipping exactly.

    For an image I in [0, 1] and a binary drawing T, sum |I - T| = sum I + sum T - 2 sum I*T,
    and sum I*T over a square is rows(T)' I cols(T): two small matrix products per candidate
    instead of a 64x64 drawing each."""

    offsets: torch.Tensor

    def __init__(self, model: CoordNet, radius: int = 3) -> None:
        super().__init__()
        self.model = model
        steps = range(-radius, radius + 1)
        offsets = [(dx, dy) for dy in steps for dx in steps]
        self.register_buffer(
            "offsets", torch.tensor(offsets, dtype=torch.float32), persistent=False
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        estimate = torch.round(self.model.predict(image))  # (B, 2)
        cand = (estimate.unsqueeze(1) + self.offsets).clamp(0, CANVAS - 1)  # (B, K, 2)
        cols = torch.arange(w, device=image.device).to(image.dtype)
        rows = torch.arange(h, device=image.device).to(image.dtype)
        dx = (cols - cand[..., 0:1]).abs()  # (B, K, W)
        dy = (rows - cand[..., 1:2]).abs()  # (B, K, H)
        half = (SQUARE - 1) / 2
        in_x, in_y = (dx <= half).to(image.dtype), (dy <= half).to(image.dtype)
        at_x, at_y = (dx == 0).to(image.dtype), (dy == 0).to(image.dtype)
        total = image.sum(dim=(1, 2)).unsqueeze(1)  # (B, 1)
        box = (torch.bmm(in_y, image) * in_x).sum(-1)  # (B, K): the image summed over each square
        dot = (torch.bmm(at_y, image) * at_x).sum(-1)  # (B, K): the image at each pixel
        area = in_y.sum(-1) * in_x.sum(-1)  # clipped squares are smaller
        cost = torch.minimum(total + area - 2 * box, total + 1 - 2 * dot)
        best = cost.argmin(dim=1, keepdim=True)  # (B, 1)
        return torch.gather(cand, 1, best.unsqueeze(-1).expand(-1, -1, 2)).squeeze(1)


class LocateWithConfidence(CoordNet):
    """A locate network whose `predict` also answers `locate_confidence`: (coords, confidence)."""

    def __init__(self, model: CoordNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        coords = self.model.predict(image)
        return coords, locate_confidence(image, coords)
