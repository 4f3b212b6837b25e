"""The structure parsers and metadata filter without a server: the same output whatever the
chunking (a marker or a chunk header split across reads), EXIF edited in place, the WebP
header patches, and a storage that cannot patch."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import piexif
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustr_aio.domain.errors import BrokenImage, ImageTooLarge
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.images.exif import orientation_exif, read_orientation, strip_gps, tiff_of
from clustr_aio.images.metadata import StripMode
from clustr_aio.images.stream import HELD_BUDGET, HOLD_BYTES, held_bytes
from clustr_aio.images.structure import ImageCheck, image_check
from clustr_aio.ingest.pipeline import IncomingFile, IngestPolicy, ingest_file
from clustr_aio.storage.base import BatchScope, Buffer, FileWriter, UploadBatch
from tests.images.photos import encode, exif_bytes, phone_photo, picture, pixels, png_chunk

CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
}


def run(check: ImageCheck, data: bytes, piece: int) -> bytes:
    out: list[Buffer] = []
    for at in range(0, len(data), piece):
        out += check.feed(memoryview(data)[at : at + piece])
    out += check.finish()
    whole = bytearray(b"".join(bytes(p) for p in out))
    for offset, patch in check.patches:
        whole[offset : offset + len(patch)] = patch
    return bytes(whole)


def checked(ext: str, data: bytes, mode: StripMode = "location", piece: int = 4096) -> bytes:
    check = image_check(CONTENT_TYPES[ext], f"x.{ext}", max_pixels=10**8, strip=mode)
    assert check is not None
    return run(check, data, piece)


@pytest.mark.parametrize("ext", CONTENT_TYPES)
@pytest.mark.parametrize("mode", ["location", "all", "none"])
def test_the_output_does_not_depend_on_how_the_bytes_are_cut(
    tmp_path: Path, ext: str, mode: StripMode
) -> None:
    # After the image's end, bytes are not looked into; an ISOBMFF file (AVIF) has no end but
    # the file's: bytes after its last box would be a box.
    trailer = b"" if ext == "avif" else b"trailer"
    photo = phone_photo(tmp_path, ext) + trailer
    whole = checked(ext, photo, mode, len(photo))
    for piece in (1, 2, 3, 7, 64, 1000):
        assert checked(ext, photo, mode, piece) == whole, piece
    assert pixels(whole) == pixels(photo)
    assert whole.endswith(b"trailer") == (mode != "all" and ext != "avif")


def test_an_eoi_split_across_two_reads_is_found() -> None:
    jpeg = encode("jpg", picture())
    cut = len(jpeg) - 1  # ...FF | D9
    check = image_check("image/jpeg", "x.jpg", max_pixels=10**8, strip="none")
    assert check is not None
    out = check.feed(jpeg[:cut]) + check.feed(jpeg[cut:]) + check.finish()
    assert b"".join(bytes(p) for p in out) == jpeg


@pytest.mark.parametrize("mode", ["location", "all", "none"])
@pytest.mark.parametrize("after", [b"", b"trailer", bytes(HOLD_BYTES + 4321)])
def test_a_jpeg_without_an_eoi_is_refused_whatever_follows_and_however_cut(
    mode: StripMode, after: bytes
) -> None:
    """RestHolding looks at the file's end first, then at the bytes it held back (more than
    HOLD_BYTES of them searched on the way): an EOI found anywhere passes, none anywhere is
    a 415, whatever the reads."""
    jpeg = encode("jpg", picture())
    assert jpeg.endswith(b"\xff\xd9")
    pieces = (1, 2, 1000, len(jpeg) - 1) if len(after) < 1000 else (4096, HOLD_BYTES)
    for piece in pieces:
        assert checked("jpg", jpeg + after, mode, piece) == jpeg + (b"" if mode == "all" else after)
        with pytest.raises(BrokenImage, match="before the EOI marker"):
            checked("jpg", jpeg[:-2] + after, mode, piece)
        with pytest.raises(BrokenImage, match="before the EOI marker"):
            checked("jpg", jpeg[:-1] + after, mode, piece)  # FF then no D9


def test_an_eoi_split_across_what_is_held_and_what_comes_next_is_found() -> None:
    """The EOI's FF as the last byte of what RestHolding searched on the way (over
    HOLD_BYTES), its D9 the first that comes next, then more that is no EOI."""
    jpeg = encode("jpg", picture())
    image_start = jpeg.rindex(b"\xff\xda")
    padding = bytes(HOLD_BYTES)  # zeros: no EOI in them
    data = jpeg[:-2] + padding + b"\xff\xd9" + b"after"
    cut = len(data) - len(b"after") - 1  # ...FF | D9 after
    assert cut - image_start > HOLD_BYTES
    check = image_check("image/jpeg", "x.jpg", max_pixels=10**8, strip="location")
    assert check is not None
    out = check.feed(data[:cut]) + check.feed(data[cut:]) + check.finish()
    assert b"".join(bytes(p) for p in out) == data


def test_what_stalled_jpegs_hold_back_together_stays_within_the_budget() -> None:
    """Hundreds of uploads that stop inside their image data (RestHolding keeps what passed,
    unsearched, for the end) hold no more than HELD_BUDGET between them, and nothing once
    they are dropped."""
    jpeg = encode("jpg", picture())
    image_data = jpeg.rindex(b"\xff\xda") + 64  # inside the entropy-coded data
    before = held_bytes()
    checks = []
    for _ in range(300):
        check = image_check("image/jpeg", "x.jpg", max_pixels=10**8, strip="location")
        assert check is not None
        check.feed(jpeg[:image_data])
        for _ in range(4):
            check.feed(bytes(16 * 1024))  # zeros: no EOI in them
            assert held_bytes() - before <= HELD_BUDGET + 16 * 1024
        checks.append(check)
    assert held_bytes() - before > HELD_BUDGET // 2  # they do hold some
    del checks, check
    assert held_bytes() == before


def test_the_image_data_is_passed_on_without_copies() -> None:
    jpeg = encode("jpg", picture((640, 480)))
    check = image_check("image/jpeg", "x.jpg", max_pixels=10**8, strip="none")
    assert check is not None
    chunk = memoryview(jpeg)
    out = check.feed(chunk)
    big = max(out, key=len)
    assert isinstance(big, memoryview)
    assert big.obj is jpeg  # a slice of the received chunk


def test_strip_gps_removes_the_gps_ifd_and_keeps_every_other_tag() -> None:
    _, tiff = tiff_of(exif_bytes(orientation=6))
    stripped = strip_gps(tiff)
    assert stripped is not None
    assert len(stripped) == len(tiff)
    loaded = piexif.load(b"Exif\x00\x00" + stripped)
    assert not loaded["GPS"]
    assert loaded["0th"][piexif.ImageIFD.Make] == b"PhoneMaker"
    assert loaded["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2026:06:01 12:00:00"
    assert read_orientation(stripped) == 6
    assert b"PhoneMaker" in stripped
    assert strip_gps(stripped) is None  # nothing left to remove


def test_the_minimal_exif_holds_the_orientation_only() -> None:
    loaded = piexif.load(b"Exif\x00\x00" + orientation_exif(8))
    assert loaded["0th"] == {piexif.ImageIFD.Orientation: 8}
    assert not loaded["Exif"]
    assert not loaded["GPS"]


def test_webp_riff_size_and_vp8x_flags_are_patched(tmp_path: Path) -> None:
    photo = phone_photo(tmp_path, "webp")
    assert photo[20] & 0x0C == 0x0C  # VP8X: EXIF and XMP
    stored = checked("webp", photo, "all")
    assert struct.unpack_from("<I", stored, 4)[0] == len(stored) - 8
    assert stored[20] & 0x0C == 0x08  # EXIF (the orientation) stays, XMP is gone
    upright = phone_photo(tmp_path, "webp", orientation=1)
    stored = checked("webp", upright, "all")
    assert stored[20] & 0x0C == 0  # nothing left at all
    assert struct.unpack_from("<I", stored, 4)[0] == len(stored) - 8


class _Sequential:
    """A writer without the patching capability (an object store's multipart upload)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    async def write(self, data: Buffer) -> None:
        assert not self.closed
        self.data += data

    async def close(self) -> None:
        self.closed = True


class _SequentialBatch:
    def __init__(self) -> None:
        self.writers: list[_Sequential] = []

    def add_file(self, desired_name: str) -> FileWriter:
        self.writers.append(_Sequential())
        return self.writers[-1]

    async def leave_out(self, slots: Collection[int]) -> None:
        pass

    async def publish(self) -> list[str]:
        return []

    async def seal(self) -> None:
        pass

    async def discard(self) -> None:
        pass


async def test_a_writer_that_cannot_patch_gets_the_whole_file_at_its_end(tmp_path: Path) -> None:
    photo = phone_photo(tmp_path, "webp")

    async def chunks() -> AsyncIterator[Buffer]:
        for at in range(0, len(photo), 1000):
            yield photo[at : at + 1000]

    batch = _SequentialBatch()
    target: UploadBatch = batch
    policy = IngestPolicy(
        allowed_extensions=frozenset({"webp"}),
        limits=UploadLimits(max_file_size=10**6, max_request_size=10**7, max_files=1),
        strip_metadata="all",
    )
    received = await ingest_file(IncomingFile("p.webp", chunks()), BatchScope(target), policy)
    [writer] = batch.writers
    assert writer.closed
    assert bytes(writer.data) == checked("webp", photo, "all")
    assert received.file_size == len(writer.data)


MUTATION = st.tuples(
    st.sampled_from(["set", "delete", "insert", "cut"]),
    st.floats(0, 1, exclude_max=True),
    st.binary(min_size=1, max_size=8),
)


@pytest.mark.parametrize("ext", CONTENT_TYPES)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_a_damaged_image_is_refused_as_such_never_with_another_error(
    photos: dict[str, bytes], ext: str, mutations: list[tuple[str, float, bytes]]
) -> None:
    """Whatever the damage, the check answers with BrokenImage (415) or ImageTooLarge (413),
    or accepts: never an IndexError or struct.error, which would be a 500."""
    data = bytearray(photos[ext])
    for kind, where, value in mutations:
        at = int(where * len(data))
        if kind == "set":
            data[at : at + len(value)] = value
        elif kind == "delete":
            del data[at : at + len(value) * 8]
        elif kind == "insert":
            data[at:at] = value
        else:
            del data[at:]
    for mode in ("location", "all", "none"):
        with contextlib.suppress(BrokenImage, ImageTooLarge):
            checked(ext, bytes(data), mode, 500)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("photos")
    return {ext: phone_photo(folder, ext) for ext in CONTENT_TYPES}


def test_png_raw_profiles_and_xmp_text_go_under_location() -> None:
    """ImageMagick keeps EXIF, XMP and IPTC as hex in text chunks, which exiftool reads as
    such: under location they go; other text stays, and an iTXt XMP packet is filtered."""
    png = encode("png", picture((20, 10)))
    iend = png.rindex(b"IEND") - 4
    xmp = b'<x:xmpmeta><rdf:Description exif:GPSLatitude="1" dc:title="t"/></x:xmpmeta>'
    chunks = (
        png_chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(b"exif\n 4\n0000"))
        + png_chunk(b"tEXt", b"Comment\x00a comment")
        + png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
    )
    stored = checked("png", png[:iend] + chunks + png[iend:], "location")
    assert b"Raw profile type" not in stored
    assert b"a comment" in stored
    assert b"GPSLatitude" not in stored
    assert b'dc:title="t"' in stored
    assert pixels(stored) == pixels(png)


def test_verbatim_until_says_where_the_output_stops_being_the_input() -> None:
    """What ingest/in_place.py relies on: None while every output byte is the input's."""
    from clustr_aio.images.structure import ImageCheck
    from tests.images.photos import encode, exif_bytes, picture

    plain = encode("jpg", picture()) + b"after"
    with_gps = encode("jpg", picture(), exif=exif_bytes())
    cases: tuple[tuple[bytes, StripMode, bool], ...] = (
        (plain, "location", True),
        (plain, "all", False),  # the bytes after its end dropped
        (with_gps, "location", False),
        (with_gps, "none", True),
    )
    for data, strip, verbatim in cases:
        check = ImageCheck("image/jpeg", "a.jpg", max_pixels=10**8, strip=strip)
        out = b"".join(
            bytes(piece)
            for at in range(0, len(data), 100)
            for piece in check.feed(data[at : at + 100])
        )
        out += b"".join(bytes(piece) for piece in check.finish())
        until = check.verbatim_until
        assert (until is None) == verbatim, (strip, until)
        assert (out == data) == verbatim
        if until is not None:  # at or before the first byte that differs
            assert out[:until] == data[:until]
