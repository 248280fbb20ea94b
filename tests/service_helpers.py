"""Small helpers for the service tests: PNG bytes, NPY bytes."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    if mode == "L":
        Image.fromarray(np.rint(image * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    elif mode == "I;16":
        Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(buf, "PNG")
    elif mode == "RGB":
        g = np.rint(image * 255).astype(np.uint8)
        Image.fromarray(np.stack([g, g, g], -1), mode="RGB").save(buf, "PNG")
    elif mode == "RGBA":
        rgba = np.zeros((*image.shape, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = np.rint(image * 255).astype(np.uint8)  # white where opaque
        Image.fromarray(rgba, mode="RGBA").save(buf, "PNG")
    return buf.getvalue()


def png_b64(image: np.ndarray, mode: str = "L") -> str:
    return base64.b64encode(png_bytes(image, mode)).decode()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def decode_png_b64(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.float32) / 255.0
