"""Encodings of images and arrays: PNG (base64 or raw), NPY, and JSON nested lists.

Decoding checks everything a client can get wrong and raises BadRequest with a message that says
what: a PNG's header is read before its pixels, so a decompression bomb is refused undecoded.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import struct
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from coordconv.contract import CANVAS
from coordconv.png import encode_png  # re-exported: the one encoder, shared with the client
from service.errors import BadRequest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URL_PREFIX = "data:image/png;base64,"
# Pillow's own bomb guard, far above 64x64 but below anything that could hurt memory.
Image.MAX_IMAGE_PIXELS = 4096 * 4096

F32 = npt.NDArray[np.float32]


def encode_png_b64(image: npt.NDArray[np.floating[Any]], scale_to_max: bool = False) -> str:
    """`encode_png` as base64 text, for JSON answers."""
    return base64.b64encode(encode_png(image, scale_to_max)).decode("ascii")


def decode_png(data: bytes, where: str = "image") -> F32:
    """PNG bytes -> (64, 64) float32 in [0, 1]. 8-bit scales by 1/255, 16-bit by 1/65535,
    colour becomes grayscale, alpha is composited over black."""
    if not data.startswith(PNG_MAGIC):
        raise BadRequest(f"{where}: not a PNG (it does not start with the PNG signature)")
    # The IHDR chunk comes first: read the claimed size before Pillow sees the file, so a
    # decompression bomb is refused with its size and without decoding anything.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise BadRequest(f"{where}: corrupt PNG (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    if (width, height) != (CANVAS, CANVAS):
        raise BadRequest(f"{where}: PNG is {width}x{height} pixels, expected {CANVAS}x{CANVAS}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG"])
            # Only the header has been read: refuse other sizes before decoding any pixels.
            if img.size != (CANVAS, CANVAS):
                w, h = img.size
                raise BadRequest(f"{where}: PNG is {w}x{h} pixels, expected {CANVAS}x{CANVAS}")
            img.load()
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(f"{where}: PNG claims a huge size; expected 64x64") from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise BadRequest(f"{where}: corrupt or unreadable PNG ({type(exc).__name__})") from None
    return _to_unit_gray(img, where)


def _to_unit_gray(img: Image.Image, where: str) -> F32:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float32) / 65535.0
    elif mode == "1":
        arr = np.asarray(img, dtype=np.float32)
    elif mode == "L":
        arr = np.asarray(img, dtype=np.float32) / 255.0
    elif mode in {"LA", "RGBA"}:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        gray = _luma(rgba[..., :3])
        arr = gray * rgba[..., 3]  # composited over black
    elif mode == "RGB":
        arr = _luma(np.asarray(img, dtype=np.float32) / 255.0)
    else:
        raise BadRequest(f"{where}: unsupported PNG mode {mode}")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def _luma(rgb: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """ITU-R 601 luma, as Pillow's convert("L") uses."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def decode_png_b64(text: str, where: str = "image") -> F32:
    if text.startswith(DATA_URL_PREFIX):
        text = text[len(DATA_URL_PREFIX) :]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: invalid base64") from None
    return decode_png(raw, where)


def encode_npy(array: npt.NDArray[Any]) -> bytes:
    """The bytes np.save would write, from a cached header and one copy of the data (np.save
    formats its header anew and copies twice on every call)."""
    a = np.ascontiguousarray(array)
    descr = np.lib.format.dtype_to_descr(a.dtype)
    if a.dtype.hasobject or not isinstance(descr, str):  # structured dtypes: np.save itself
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()
    return b"".join((_npy_header(descr, a.shape), a.data))


@functools.lru_cache(maxsize=512)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


NPY_MAGIC = b"\x93NUMPY"


def npy_items(data: bytes) -> int | None:
    """The number of images an NPY body claims, from its header alone (None if unreadable): the
    item limit is checked before the array is read."""
    try:
        f = io.BytesIO(data[:4096])
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape = read(f)[0]
    except Exception:
        return None
    return int(shape[0]) if len(shape) >= 1 else None


def decode_npy(data: bytes) -> F32:
    """An NPY body (never unpickled) -> float32 (N, 64, 64), checked."""
    if not data.startswith(NPY_MAGIC):
        what = "a PNG" if data.startswith(PNG_MAGIC) else "something else"
        raise BadRequest(
            f"not an NPY body (it does not start with the NPY magic; it looks like {what}): "
            "send PNGs as JSON or multipart/form-data"
        )
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise BadRequest(
                "NPY body needs pickle (an object array); send float32 or float64"
            ) from None
        raise BadRequest(f"not a valid NPY body: {exc}") from None
    except Exception as exc:
        raise BadRequest(f"not a valid NPY body ({type(exc).__name__})") from None
    if not isinstance(arr, np.ndarray):
        raise BadRequest("NPY body must hold a single array")
    if arr.dtype not in (np.float32, np.float64):
        raise BadRequest(f"NPY array has dtype {arr.dtype}; expected float32 or float64")
    if arr.ndim != 3 or arr.shape[1:] != (CANVAS, CANVAS):
        raise BadRequest(f"NPY array has shape {arr.shape}; expected (N, {CANVAS}, {CANVAS})")
    return arr.astype(np.float32, copy=False)


def check_multipart_complete(body: bytes, content_type: str) -> None:
    """A multipart body must end with its closing boundary: a truncated upload is refused as
    such, not parsed into whatever parts arrived."""
    boundary = next(
        (
            p.split("=", 1)[1].strip().strip('"')
            for p in content_type.split(";")[1:]
            if p.strip().lower().startswith("boundary=")
        ),
        None,
    )
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary in its Content-Type")
    if not body.rstrip(b"\r\n").endswith(b"--" + boundary.encode("latin-1") + b"--"):
        raise BadRequest(
            "truncated multipart body: it does not end with the closing boundary "
            f"--{boundary[:70]}--"
        )


def check_images(images: F32, what: str = "images") -> F32:
    """Values must be finite and in [0, 1]; names the first offending image."""
    flat = images.reshape(len(images), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise BadRequest(f"{what}[{int(np.argmax(bad))}] has NaN or infinite values")
    out = (flat.min(axis=1) < 0) | (flat.max(axis=1) > 1)
    if out.any():
        i = int(np.argmax(out))
        raise BadRequest(
            f"{what}[{i}] has values outside [0, 1] (min {flat[i].min():g}, max {flat[i].max():g})"
        )
    return images


def parse_coords(coords: Any, what: str = "coords") -> F32:
    """Nested [[x, y], ...] -> float64 (N, 2), kept exact until check_coords_array has checked
    the values (a float32 cast would round 63.0000001 onto the canvas)."""
    if not isinstance(coords, list):
        raise BadRequest(f"{what} must be a list of [x, y] pairs")
    if any(isinstance(v, bool) for pair in coords if isinstance(pair, list) for v in pair):
        raise BadRequest(f"{what} must hold numbers, not booleans")
    try:
        arr = np.array(coords)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what} must be a list of [x, y] pairs of numbers") from None
    if arr.dtype.kind not in "iuf":  # strings, objects (ragged)
        raise BadRequest(f"{what} must be a list of [x, y] pairs of numbers")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BadRequest(f"{what} must be a list of [x, y] pairs, got shape {list(arr.shape)}")
    return arr.astype(np.float64)


def decode_json_images(items: list[Any], what: str = "images") -> F32:
    """JSON images (base64 PNG strings or 64x64 nested lists) -> float32 (N, 64, 64)."""
    out = np.empty((len(items), CANVAS, CANVAS), dtype=np.float32)
    for i, item in enumerate(items):
        if isinstance(item, str):
            out[i] = decode_png_b64(item, f"{what}[{i}]")
        elif isinstance(item, list):
            out[i] = array_images([item], f"{what}[{i}]")[0]
        else:
            raise BadRequest(f"{what}[{i}] must be a base64 PNG string or a 64x64 nested list")
    return out


def decode_pngs(files: list[tuple[str, bytes]], what: str = "images") -> F32:
    """Uploaded PNG files (name, bytes) -> float32 (N, 64, 64)."""
    out = np.empty((len(files), CANVAS, CANVAS), dtype=np.float32)
    for i, (filename, data) in enumerate(files):
        out[i] = decode_png(data, f"{what}[{i}] ({filename})")
    return out


def check_coords_array(arr: npt.NDArray[Any], what: str = "coords") -> F32:
    """(N, 2) coordinates must be finite and on the canvas; names the first offender."""
    # A few pairs: plain floats beat six numpy calls. NaN fails both comparisons and infinities
    # the bounds, so those go on to the checks below, which name them.
    if arr.size <= 32 and all(
        0 <= x <= CANVAS - 1 and 0 <= y <= CANVAS - 1 for x, y in arr.reshape(-1, 2).tolist()
    ):
        return arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise BadRequest(f"{what}[{int(np.argmax(bad))}] is NaN or infinite")
    out = (arr < 0).any(axis=1) | (arr > CANVAS - 1).any(axis=1)
    if out.any():
        i = int(np.argmax(out))
        x, y = arr[i]
        raise BadRequest(f"{what}[{i}] = [{x:g}, {y:g}] is outside the canvas [0, {CANVAS - 1}]")
    return arr.astype(np.float32, copy=False)


def array_images(images: list[Any], what: str = "images") -> F32:
    """A list of 64x64 nested float lists -> float32 (N, 64, 64)."""
    try:
        raw = np.array(images)
        if raw.dtype.kind not in "iuf":  # strings, objects (ragged), booleans
            raise TypeError
        with np.errstate(over="ignore"):  # huge values become inf; check_images refuses them
            arr = raw.astype(np.float32)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(
            f"{what} must be base64 PNG strings or 64x64 nested lists of numbers"
        ) from None
    if arr.ndim != 3 or arr.shape[1:] != (CANVAS, CANVAS):
        shape = list(arr.shape[1:]) if arr.ndim >= 2 else list(arr.shape)
        raise BadRequest(f"{what}: each image must be 64x64, got {shape}")
    return arr
