"""Real photos for the image tests, made here: Pillow draws and encodes them, piexif writes
their EXIF (orientation, camera, GPS), exiftool adds XMP, IPTC, comments and text the way
photo tools write them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import piexif
import pytest
from PIL import Image, ImageCms

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool missing (Debian libimage-exiftool-perl, .ci/system-deps)"
)

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "avif": "AVIF"}

COMMENT = b"taken on a phone"

GPS = {
    piexif.GPSIFD.GPSLatitudeRef: b"N",
    piexif.GPSIFD.GPSLatitude: ((48, 1), (51, 1), (2400, 100)),
    piexif.GPSIFD.GPSLongitudeRef: b"E",
    piexif.GPSIFD.GPSLongitude: ((2, 1), (21, 1), (0, 1)),
    piexif.GPSIFD.GPSAltitude: (35, 1),
}


def exif_bytes(*, orientation: int = 1, gps: bool = True) -> bytes:
    exif: bytes = piexif.dump(
        {
            "0th": {
                piexif.ImageIFD.Orientation: orientation,
                piexif.ImageIFD.Make: b"PhoneMaker",
                piexif.ImageIFD.Model: b"Phone 12",
            },
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2026:06:01 12:00:00"},
            "GPS": GPS if gps else {},
        }
    )
    return exif


def srgb_profile() -> bytes:
    profile: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile


def picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Something with detail in every channel, so that a re-encode would show."""
    width, height = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.effect_noise(size, 60).convert("L")
    image = Image.merge("RGB", (red, green, blue))
    assert image.size == (width, height)
    return image


def encode(ext: str, image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    if ext in ("webp", "avif"):
        options.setdefault("quality", 80)
    image.save(out, FORMATS[ext], **options)
    return out.getvalue()


def phone_photo(
    tmp_path: Path, ext: str, *, orientation: int = 6, size: tuple[int, int] = (64, 48)
) -> bytes:
    """A photo as a phone leaves it: EXIF with orientation, camera and GPS, an ICC profile, and
    (written by exiftool) XMP with GPS and a city, IPTC with a city, a comment or text chunk."""
    if ext == "gif":  # no EXIF in GIF: a comment and (below) XMP; three frames
        frames = [picture(size).rotate(angle) for angle in (0, 90, 180)]
        data = encode(ext, frames[0], save_all=True, append_images=frames[1:], comment=COMMENT)
    else:
        data = encode(
            ext, picture(size), exif=exif_bytes(orientation=orientation), icc_profile=srgb_profile()
        )
    if EXIFTOOL is None:
        return data
    path = tmp_path / f"phone.{ext}"
    path.write_bytes(data)
    tags = [
        "-XMP-exif:GPSLatitude=48.8567",
        "-XMP-exif:GPSLongitude=2.3508",
        "-XMP-photoshop:City=Paris",
        "-XMP-dc:Creator=Ada",
        "-XMP-dc:Title=Holiday",
    ]
    if ext == "jpg":
        tags += ["-IPTC:City=Paris", "-IPTC:Keywords=holiday", "-Comment=taken on a phone"]
    if ext == "png":
        tags += ["-PNG:Comment=taken on a phone", "-PNG:Software=PhoneCam"]
    subprocess.run(
        [EXIFTOOL, "-q", "-overwrite_original", *tags, str(path)], check=True, timeout=60
    )
    return path.read_bytes()


def exiftool_tags(data: bytes, tmp_path: Path, ext: str) -> dict[str, Any]:
    """Every tag exiftool finds, as ``Group0:Tag`` (duplicates too), file system tags aside."""
    assert EXIFTOOL is not None
    path = tmp_path / f"inspect.{ext}"
    path.write_bytes(data)
    result = subprocess.run(
        [EXIFTOOL, "-j", "-a", "-G0", "-u", "--File:all", "--ExifTool:all", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    [tags] = json.loads(result.stdout)
    return {k: v for k, v in tags.items() if k != "SourceFile" and not k.startswith("Composite")}


def pixels(data: bytes) -> tuple[tuple[int, int], str, bytes]:
    """The decoded pixels as stored, orientation not applied."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.mode, image.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, in a few KB: IDAT holds only
    the first rows (a decoder would inflate 112 MB before it found out)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    rows = zlib.compress(bytes(2_000_000), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )
