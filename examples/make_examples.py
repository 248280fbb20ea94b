"""The sample inputs of the README's batch client examples, and their check.

    python examples/make_examples.py            # check examples/coords.csv and examples/pngs/
    python examples/make_examples.py --write    # (re)write examples/pngs/ from CENTRES

`coords.csv` (columns id,x,y) is for `coordconv client render`; `pngs/` holds 64x64 8-bit
grayscale PNGs of 9x9 squares (as the README's Conventions draw them), named after their
centre (`x12-y20.png`), for `coordconv client locate`. numpy, Pillow and coordconv.png only.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from coordconv.contract import CANVAS, SQUARE
from coordconv.png import encode_png

HERE = Path(__file__).resolve().parent
CENTRES = [(12, 20), (32, 32), (50, 14), (40, 52)]


def square(x: int, y: int) -> np.ndarray:
    """The 9x9 square centred on (x, y), clipped to the canvas: values 0 and 1, [y][x]."""
    image = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    h = SQUARE // 2
    image[max(y - h, 0) : y + h + 1, max(x - h, 0) : x + h + 1] = 1.0
    return image


def write() -> None:
    folder = HERE / "pngs"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for x, y in CENTRES:
        (folder / f"x{x}-y{y}.png").write_bytes(encode_png(square(x, y)))


def check() -> list[str]:
    """Problems with the examples ([] = valid input for the client)."""
    from client.files import InputError, read_coords, read_images

    problems = []
    try:
        coords = read_coords(HERE / "coords.csv")
        if len(coords) < 3:
            problems.append("coords.csv: fewer than 3 rows")
    except InputError as exc:
        problems.append(str(exc))
    try:
        read_images(HERE / "pngs")
    except InputError as exc:
        problems.append(str(exc))
    expected = {f"x{x}-y{y}.png": (x, y) for x, y in CENTRES}
    found = {p.name for p in (HERE / "pngs").glob("*.png")}
    if found != set(expected):
        problems.append(f"pngs/: expected {sorted(expected)}, found {sorted(found)}")
    for name, (x, y) in expected.items():
        path = HERE / "pngs" / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if (im.format, im.mode, im.size) != ("PNG", "L", (CANVAS, CANVAS)):
                problems.append(f"{name}: {im.format} {im.mode} {im.size}, expected PNG L 64x64")
                continue
            pixels = np.asarray(im, dtype=np.float32) / 255.0
        if not np.array_equal(pixels, square(x, y)):
            problems.append(f"{name}: not the 9x9 square centred on ({x}, {y})")
        if len(data) > 1024:
            problems.append(f"{name}: {len(data)} bytes; keep examples small")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite examples/pngs/ first")
    a = p.parse_args()
    if a.write:
        write()
    problems = check()
    for problem in problems:
        print(f"examples: {problem}", file=sys.stderr)
    if not problems:
        print("examples: coords.csv and pngs/ are valid client input")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
