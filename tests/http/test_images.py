"""Images through the real server: dimensions and orientation in the upload's answer, metadata
stripped losslessly (exiftool looks at what was stored, Pillow compares the pixels), pixel bombs
refused at their header, broken and truncated images refused with what is wrong."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import assert_nothing_stored
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, part_head, upload, upload_ok
from tests.http.test_upload_limits import send
from tests.images.photos import (
    COMMENT,
    encode,
    exiftool_tags,
    needs_exiftool,
    phone_photo,
    picture,
    pixels,
    png_bomb,
    png_chunk,
)

EXTENSIONS = ("jpg", "png", "webp")

# What exiftool may still report under STRIP_METADATA=all: the structure of the image, its
# colour (ICC profile, JFIF), and the orientation.
STRUCTURE_TAGS = {
    "EXIF:Orientation",
    "PNG:ImageWidth",
    "PNG:ImageHeight",
    "PNG:BitDepth",
    "PNG:ColorType",
    "PNG:Compression",
    "PNG:Filter",
    "PNG:Interlace",
    "PNG:ProfileName",  # the iCCP chunk's name for its profile
    "RIFF:WebP_Flags",
    "RIFF:ImageWidth",
    "RIFF:ImageHeight",
    "RIFF:VP8Version",
    "RIFF:HorizontalScale",
    "RIFF:VerticalScale",
}
STRUCTURE_GROUPS = ("JFIF:", "ICC_Profile:")


async def upload_phone_photo(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, ext: str, strip: str
) -> tuple[bytes, dict[str, Any], bytes]:
    """A phone's photo (GPS and all) uploaded under ``STRIP_METADATA=strip``: what was sent,
    the upload's item, and what was stored."""
    original = phone_photo(tmp_path, ext)
    client = await make_client(strip_metadata=strip)
    [item] = await upload_ok(client, (f"photo.{ext}", original))
    return original, item, (upload_dir / f"photo.{ext}").read_bytes()


@needs_exiftool
@pytest.mark.parametrize("ext", EXTENSIONS)
async def test_location_leaves_no_gps_and_keeps_the_rest(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, ext: str
) -> None:
    original, item, stored = await upload_phone_photo(
        make_client, upload_dir, tmp_path, ext, "location"
    )
    before = exiftool_tags(original, tmp_path, ext)
    assert any("GPS" in tag for tag in before)  # the fixture leaks, as a phone's photo does
    assert "XMP:City" in before
    after = exiftool_tags(stored, tmp_path, ext)
    assert not [tag for tag in after if "GPS" in tag or tag.endswith(":City")], after
    for kept in ("EXIF:Make", "EXIF:Orientation", "EXIF:DateTimeOriginal", "XMP:Creator"):
        assert after[kept] == before[kept]
    assert pixels(stored) == pixels(original)
    assert item["metadata_removed"] is True
    assert item["file_size"] == len(stored) < len(original)
    # The hash is of what the client sent, so that its own pre-check (/api/files/check) works.
    assert item["sha256"] == hashlib.sha256(original).hexdigest()


@needs_exiftool
@pytest.mark.parametrize("ext", EXTENSIONS)
async def test_all_leaves_only_orientation_and_colour(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, ext: str
) -> None:
    original, item, stored = await upload_phone_photo(make_client, upload_dir, tmp_path, ext, "all")
    after = exiftool_tags(stored, tmp_path, ext)
    left = {tag for tag in after if tag not in STRUCTURE_TAGS}
    assert not {tag for tag in left if not tag.startswith(STRUCTURE_GROUPS)}, after
    assert after["EXIF:Orientation"] == "Rotate 90 CW"
    assert any(tag.startswith("ICC_Profile:") for tag in after)
    assert pixels(stored) == pixels(original)
    assert (item["metadata_removed"], item["orientation"]) == (True, 6)


@needs_exiftool
@pytest.mark.parametrize("ext", EXTENSIONS)
async def test_none_stores_the_bytes_sent(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, ext: str
) -> None:
    original, item, stored = await upload_phone_photo(
        make_client, upload_dir, tmp_path, ext, "none"
    )
    assert stored == original
    assert item["metadata_removed"] is False


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize(("orientation", "swapped"), [(1, False), (3, False), (6, True), (8, True)])
async def test_width_and_height_are_as_displayed(
    make_client: MakeClient, tmp_path: Path, ext: str, orientation: int, swapped: bool
) -> None:
    photo = phone_photo(tmp_path, ext, orientation=orientation, size=(64, 48))
    client = await make_client()
    [item] = await upload_ok(client, (f"p.{ext}", photo))
    expected = (48, 64) if swapped else (64, 48)
    assert (item["width"], item["height"], item["orientation"]) == (*expected, orientation)


async def test_a_file_that_is_not_an_image_type_has_no_dimensions(make_client: MakeClient) -> None:
    client = await make_client(allowed_extensions=frozenset({"bin"}))
    [item] = await upload_ok(client, ("blob.bin", b"\x00" * 10))
    assert (item["width"], item["height"], item["orientation"]) == (None, None, None)
    assert item["metadata_removed"] is False


# --------------------------------------------------------------------------- pixel bombs


async def test_a_png_bomb_is_refused_in_milliseconds_with_flat_memory(
    make_client: MakeClient, upload_dir: Path
) -> None:
    bomb = png_bomb(30_000, 30_000)
    assert len(bomb) < 4096  # a few KB that would decode to 900 megapixels
    client = await make_client()
    await upload_ok(client, ("warm-up.png", encode("png", picture())))
    tracemalloc.start()
    try:
        started = time.perf_counter()
        response = await upload(client, ("bomb.png", bomb))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    detail = await expect_error(response, 413)
    assert detail == (
        "'bomb.png' is 30000 x 30000 pixels (900000000 in all), more than MAX_IMAGE_PIXELS"
        " (100000000)"
    )
    assert elapsed < 0.5, elapsed  # about 5 ms alone; the bound allows for a busy machine
    assert peak < 4 * 1024 * 1024, peak  # the test client, the server and the check together
    assert not (upload_dir / "bomb.png").exists()


def _jpeg_with_size(width: int, height: int) -> bytes:
    jpeg = encode("jpg", picture((16, 16)))
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4 :]


def _webp_with_canvas(width: int, height: int) -> bytes:
    vp8 = encode("webp", picture((16, 16)))[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4)
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + vp8
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("name", "data", "pixel_count"),
    [
        ("big.jpg", _jpeg_with_size(65_000, 60_000), 3_900_000_000),
        ("big.webp", _webp_with_canvas(16_000, 16_000), 256_000_000),
        ("big.png", png_bomb(20_000, 10_000), 200_000_000),
    ],
)
async def test_every_format_is_held_to_max_image_pixels(
    make_client: MakeClient, name: str, data: bytes, pixel_count: int
) -> None:
    client = await make_client()
    detail = await expect_error(await upload(client, (name, data)), 413)
    assert f"({pixel_count} in all), more than MAX_IMAGE_PIXELS (100000000)" in detail
    lower = await make_client(max_image_pixels=pixel_count)
    if name.endswith(".png"):
        return  # its IDAT is cut short: the structure check refuses it once the size passes
    await upload_ok(lower, (name, data))


@needs_exiftool
@pytest.mark.parametrize("strip", ["location", "all", "none"])
async def test_a_gif_when_allowed(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, strip: str
) -> None:
    """GIF is off by default; allowed, it is checked and filtered as the others are: its
    comment and XMP packet go (XMP under location too: it is not filtered in place)."""
    gif = phone_photo(tmp_path, "gif", size=(40, 30))
    client = await make_client(allowed_extensions=frozenset({"gif"}), strip_metadata=strip)
    [item] = await upload_ok(client, ("anim.gif", gif))
    stored = (upload_dir / "anim.gif").read_bytes()
    assert (item["content_type"], item["width"], item["height"]) == ("image/gif", 40, 30)
    assert item["metadata_removed"] is (strip != "none")
    tags = exiftool_tags(stored, tmp_path, "gif")
    assert any(tag.startswith("XMP:") for tag in tags) is (strip == "none")
    assert (COMMENT in stored) is (strip != "all")
    for frame in range(3):
        assert gif_frame(stored, frame) == gif_frame(gif, frame)
    cut = await upload(client, ("cut.gif", gif[: len(gif) // 2]))
    assert "'cut.gif' is not a valid GIF image: it ends inside" in await expect_error(cut, 415)
    small = await make_client(allowed_extensions=frozenset({"gif"}), max_image_pixels=3599)
    detail = await expect_error(await upload(small, ("anim.gif", gif)), 413)
    assert "(3600 in all)" in detail  # the canvas and the second and third frames


@needs_exiftool
@pytest.mark.parametrize("strip", ["location", "all", "none"])
async def test_avif_and_heic_when_allowed(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, strip: str
) -> None:
    """Their EXIF and XMP items are edited in place (no offset moves); the rotation is HEIF's
    irot (Pillow turns EXIF orientation 6 into irot 3)."""
    avif = phone_photo(tmp_path, "avif", orientation=6, size=(64, 48))
    # The same container under a HEIC brand: structurally a HEIF file (not decodable as one).
    heic = avif[:8] + b"heic" + avif[12:]
    allowed = frozenset({"avif", "heic"})
    client = await make_client(allowed_extensions=allowed, strip_metadata=strip)
    items = await upload_ok(client, ("p.avif", avif), ("p.heic", heic))
    assert [item["content_type"] for item in items] == ["image/avif", "image/heic"]
    for item, original in zip(items, (avif, heic), strict=True):
        assert (item["width"], item["height"], item["orientation"]) == (48, 64, 6)
        assert item["metadata_removed"] is (strip != "none")
        stored = (upload_dir / item["stored_filename"]).read_bytes()
        assert len(stored) == len(original)
        tags = exiftool_tags(stored, tmp_path, item["stored_filename"].rpartition(".")[2])
        assert any("GPS" in tag for tag in tags) is (strip == "none")
        assert ("XMP:City" in tags) is (strip == "none")
        assert ("XMP:Creator" in tags) is (strip != "all")
        assert ("EXIF:Make" in tags) is (strip != "all")
    assert pixels((upload_dir / "p.avif").read_bytes()) == pixels(avif)
    cut = await upload(client, ("cut.avif", avif[: len(avif) - 10]))
    assert "'cut.avif' is not a valid AVIF image: it ends inside" in await expect_error(cut, 415)
    at = avif.index(b"ispe") + 8
    huge = avif[:at] + struct.pack(">II", 20_000, 20_000) + avif[at + 8 :]
    detail = await expect_error(await upload(client, ("huge.avif", huge)), 413)
    assert "'huge.avif' is 20000 x 20000 pixels" in detail


def gif_frame(data: bytes, frame: int) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(frame)
        return image.convert("RGB").tobytes()


async def test_an_animation_counts_every_frame(make_client: MakeClient) -> None:
    frames = [picture((40, 30)).rotate(angle) for angle in (0, 90, 180)]
    webp = encode("webp", frames[0], save_all=True, append_images=frames[1:], lossless=True)
    client = await make_client(max_image_pixels=3 * 40 * 30 - 1)
    detail = await expect_error(await upload(client, ("anim.webp", webp)), 413)
    assert "(3600 in all)" in detail
    client = await make_client(max_image_pixels=3 * 40 * 30)
    [item] = await upload_ok(client, ("anim.webp", webp))
    assert (item["width"], item["height"]) == (40, 30)


# --------------------------------------------------------------------------- broken images


def _flipped_idat_byte() -> bytes:
    png = bytearray(encode("png", picture()))
    png[png.index(b"IDAT") + 20] ^= 0xFF
    return bytes(png)


def _cuts(data: bytes) -> list[int]:
    return sorted({1 * len(data) // 8, len(data) // 2, len(data) - 3, len(data) - 1})


@pytest.mark.parametrize("ext", EXTENSIONS)
async def test_a_truncated_image_is_a_415_naming_the_file(
    make_client: MakeClient, upload_dir: Path, tmp_path: Path, ext: str
) -> None:
    whole = phone_photo(tmp_path, ext)
    client = await make_client()
    for cut in _cuts(whole):
        good = ("good.jpg", encode("jpg", picture()))
        response = await upload(client, good, (f"cut.{ext}", whole[:cut]))
        detail = await expect_error(response, 415)
        assert detail.startswith(f"'cut.{ext}' is not a valid "), detail
        assert "truncated" in detail, (cut, detail)
    assert_nothing_stored(upload_dir)


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("crc.png", _flipped_idat_byte(), "the IDAT chunk has a bad CRC"),
        (
            "no-ihdr.png",
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"IEND", b""),
            "its first chunk is not IHDR",
        ),
        ("no-eoi.jpg", encode("jpg", picture())[:-2], "before the EOI marker (truncated)"),
        ("no-sof.jpg", b"\xff\xd8\xff\xda\x00\x02\x00\xff\xd9", "before any SOF segment"),
        ("riff.webp", encode("webp", picture())[:-4], "truncated"),
    ],
)
async def test_a_broken_structure_is_a_415_saying_what_is_wrong(
    make_client: MakeClient, name: str, data: bytes, problem: str
) -> None:
    client = await make_client()
    detail = await expect_error(await upload(client, (name, data)), 415)
    assert detail.startswith(f"{name!r} is not a valid ")
    assert problem in detail, detail


async def test_a_bomb_is_refused_before_the_rest_of_its_body_is_sent(
    make_client: MakeClient, upload_dir: Path
) -> None:
    """The check is a stage over the stream: the header is enough to answer."""
    client = await make_client()
    declared = 256 * 1024 * 1024  # only the part's header and the PNG's first 100 bytes are sent
    response = await send(
        client, {"Content-Length": str(declared)}, part_head("bomb.png") + png_bomb()[:100]
    )
    assert response.status == 413
    assert "'bomb.png' is 30000 x 30000 pixels" in response.json()["detail"]
    assert_nothing_stored(upload_dir)
