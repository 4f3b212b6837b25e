"""The benchmark's input files, made once and reused: bench/data/ is gitignored.

- ``big.jpg``: 1 GiB that passes the server's structure check as a JPEG: a small real JPEG's
  headers, random bytes as its image data, an EOI at the end, for scenario L;
- ``batch/0000.jpg`` … ``0499.jpg``: real 1600x1200 JPEGs of about 500 KB, for scenario B, and
  ``batch.bin``, their concatenation, which nginx receives as one file of the same total size;
- ``single.jpg``: one more such JPEG, for scenarios C and S.

The JPEGs are crops at different offsets of one noisy gradient canvas, so each file is a distinct,
decodable photo-sized JPEG; encoding a crop is ~20 times cheaper than drawing a fresh canvas.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image

BIG_SIZE: Final = 1024**3
JPEG_COUNT: Final = 500
JPEG_WIDTH, JPEG_HEIGHT = 1600, 1200
# Noise sigma 24 over a colour gradient at quality 85 gives ~500 KB per 1600x1200 JPEG.
_NOISE_SIGMA: Final = 24
_QUALITY: Final = 85
_MARGIN: Final = 400  # the canvas is this much larger than a JPEG: room for distinct crops
_VERSION: Final = 2  # bump when what is generated changes, to regenerate old data


@dataclass(frozen=True, slots=True)
class DataSet:
    big: Path
    jpegs: tuple[Path, ...]
    batch_concat: Path
    single: Path

    @property
    def batch_bytes(self) -> int:
        return self.batch_concat.stat().st_size


def ensure_data(folder: Path) -> DataSet:
    """Make whatever of the data set is missing in ``folder``, then describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "manifest.json"
    data = DataSet(
        big=folder / "big.jpg",
        jpegs=tuple(folder / "batch" / f"{i:04d}.jpg" for i in range(JPEG_COUNT)),
        batch_concat=folder / "batch.bin",
        single=folder / "single.jpg",
    )
    if _is_current(stamp):
        return data
    print(f"making benchmark data in {folder} (once) …", flush=True)
    _write_random_jpeg(data.big, BIG_SIZE)
    _write_jpegs([*data.jpegs, data.single])
    _concatenate(data.jpegs, data.batch_concat)
    stamp.write_text(json.dumps({"version": _VERSION}))
    return data


def _is_current(stamp: Path) -> bool:
    try:
        return bool(json.loads(stamp.read_text()).get("version") == _VERSION)
    except (OSError, ValueError):
        return False


def _write_random_jpeg(path: Path, size: int) -> None:
    block = 16 * 1024 * 1024
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, "JPEG")
    head, end = small.getvalue()[:-2], b"\xff\xd9"  # through its image data; EOI at the end
    with path.open("wb") as out:
        out.write(head)
        left = size - len(head) - len(end)
        while left > 0:
            n = min(block, left)
            out.write(os.urandom(n))
            left -= n
        out.write(end)


def canvas(width: int, height: int) -> Image.Image:
    """A noisy colour gradient: photo-like detail that JPEG cannot squeeze away."""
    noise = Image.merge(
        "RGB", [Image.effect_noise((width, height), _NOISE_SIGMA) for _ in range(3)]
    )
    ramp = Image.linear_gradient("L").resize((width, height))
    gradient = Image.merge(
        "RGB",
        (
            ramp,
            ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
            ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        ),
    )
    return Image.blend(noise, gradient, 0.5)


def _write_jpegs(paths: list[Path]) -> None:
    picture = canvas(JPEG_WIDTH + _MARGIN, JPEG_HEIGHT + _MARGIN)
    for i, path in enumerate(paths):
        # Offsets from two coprime strides: every crop differs from every other.
        x, y = (i * 37) % _MARGIN, (i * 53) % _MARGIN
        crop = picture.crop((x, y, x + JPEG_WIDTH, y + JPEG_HEIGHT))
        encoded = io.BytesIO()
        crop.save(encoded, "JPEG", quality=_QUALITY)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.getvalue())


def _concatenate(paths: tuple[Path, ...], target: Path) -> None:
    with target.open("wb") as out:
        for path in paths:
            out.write(path.read_bytes())
