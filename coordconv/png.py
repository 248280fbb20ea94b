"""The one PNG encoder of images, shared by the service (its PNG answers), the client (its render
output files) and anything else that writes an image: values in [0, 1] as 8-bit grayscale,
255 = 1.0, rounded to the nearest level. numpy and Pillow only.

Decoders stay with their users: the service's checks every way a client's PNG can be wrong.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

# zlib level 1, as the service has always answered. On 64x64 images the level matters little:
# a rendered square is ~123 bytes (~103 at the default 6), a softmax heatmap ~3.8 kB either way.
COMPRESS_LEVEL = 1


def encode_png(image: npt.NDArray[np.floating[Any]], scale_to_max: bool = False) -> bytes:
    """An image of values in [0, 1] as an 8-bit grayscale PNG (255 = 1.0).

    With scale_to_max the brightest pixel becomes 255 (for softmax heatmaps)."""
    img = np.asarray(image, dtype=np.float32)
    if scale_to_max:
        peak = float(img.max())
        img = img / peak if peak > 0 else img
    pixels = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=COMPRESS_LEVEL)
    return buf.getvalue()
