"""Streaming structure parsers, one per image format: as the bytes arrive they check that the
file holds together, read its dimensions and orientation, stop a pixel bomb at its header, and
pass each metadata unit through :class:`~clustr_aio.images.metadata.MetadataFilter`.

Each parser is a generator driven by :class:`~clustr_aio.images.stream.Parser`: headers and
metadata units (at most :data:`MAX_METADATA_UNIT` bytes each) are read whole, image data is
passed through as slices of the received chunks, never decoded nor copied.

- JPEG: markers and segments up to the first SOS (SOF gives the size), then the entropy-coded
  data is passed through up to EOI, which must be there (searched for only where the file does
  not end with it, when what follows is kept: :class:`~clustr_aio.images.stream.RestHolding`).
- PNG: every chunk's CRC, IHDR first (the size), IEND last; APNG frames (fcTL) add up.
- GIF: the screen descriptor (the size), colour tables, every block's sub-blocks to the
  trailer; frames after the first add up. Its comments and XMP are dropped (not filtered).
- WebP: the RIFF size against the bytes, VP8X/VP8/VP8L (the size), ANMF frames add up. When
  metadata chunks change size the RIFF size (bytes 4-7) and VP8X's flags (byte 20) are known
  only at the end: they come back as :attr:`ImageCheck.patches`, for the writer to apply to
  the first bytes of the file before it is published.

- AVIF, HEIC: :mod:`clustr_aio.images.isobmff` (boxes to the end; EXIF and XMP items edited
  in place, at the same length).

What follows an image's end (after EOI, IEND, the RIFF size: a phone's motion-photo video, an
MPF second image, junk) is kept, unless ``STRIP_METADATA=all``; it is not looked into.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from clustr_aio.domain.errors import BrokenImage, ImageTooLarge
from clustr_aio.images.exif import EXIF_PREFIX
from clustr_aio.images.isobmff import isobmff_parser
from clustr_aio.images.metadata import MetadataFilter, StripMode
from clustr_aio.images.stream import (
    Emit,
    Parser,
    ParserGenerator,
    Pass,
    PassUntil,
    Read,
    ReadOrEnd,
    Rest,
    RestHolding,
    SubParser,
)
from clustr_aio.storage.base import Buffer

__all__ = ["MAX_METADATA_UNIT", "ImageCheck", "ImageInfo", "image_check"]

MAX_METADATA_UNIT: Final = 16 * 1024 * 1024
"""The largest metadata chunk read into memory to be filtered; a larger one is a 415."""

_FORMATS: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WebP",
    "image/gif": "GIF",
    "image/avif": "AVIF",
    "image/heic": "HEIC",
}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    """As displayed: with the EXIF orientation applied (swapped for 5-8)."""
    height: int
    orientation: int
    """EXIF orientation, 1-8 (1 when there is none)."""
    metadata_removed: bool


class _Found:
    """What a parser learns on the way."""

    __slots__ = ("height", "limit", "name", "patches", "pixels", "width")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.width = 0
        self.height = 0
        self.pixels = 0
        self.patches: list[tuple[int, bytes]] = []

    def size(self, width: int, height: int) -> None:
        if not self.width:
            self.width, self.height = width, height
        self.add_pixels(width, height)

    def add_pixels(self, width: int, height: int) -> None:
        self.pixels += width * height
        if self.pixels > self.limit:
            raise ImageTooLarge(
                f"{self.name!r} is {width} x {height} pixels ({self.pixels} in all), more than"
                f" MAX_IMAGE_PIXELS ({self.limit})"
            )


class ImageCheck:
    """The check of one image as a stage over its chunks: :meth:`feed` each chunk and write
    what it returns, then :meth:`finish`; :attr:`patches` are then (offset, bytes) to write
    over the output's first bytes, and :attr:`info` is known."""

    __slots__ = ("_filter", "_found", "_parser", "info", "patches")

    def __init__(self, content_type: str, filename: str, *, max_pixels: int, strip: StripMode):
        kind = _FORMATS[content_type]
        self._filter = MetadataFilter(strip)
        self._found = _Found(filename, max_pixels)
        broken = _broken(filename, kind)
        generator = _PARSERS[kind](self._filter, self._found, broken)
        self._parser = Parser(generator, lambda what: broken(f"it ends inside {what} (truncated)"))
        self.info: ImageInfo | None = None
        self.patches: list[tuple[int, bytes]] = []

    def feed(self, chunk: Buffer) -> list[Buffer]:
        return self._parser.feed(chunk)

    def finish(self) -> list[Buffer]:
        out = self._parser.finish()
        found, filter_ = self._found, self._filter
        width, height = found.width, found.height
        if filter_.orientation >= 5:
            width, height = height, width
        removed = filter_.removed or self._parser.dropped_tail > 0
        self.info = ImageInfo(width, height, filter_.orientation, removed)
        self.patches = found.patches
        return out

    @property
    def written(self) -> int:
        return self._parser.written

    @property
    def verbatim_until(self) -> int | None:
        """None while the output is the input byte for byte; then how many of its first bytes
        are (a metadata segment removed, a tail dropped: see :class:`~.stream.Parser`)."""
        return self._parser.verbatim_until


def image_check(
    content_type: str, filename: str, *, max_pixels: int, strip: StripMode
) -> ImageCheck | None:
    """The check for files of ``content_type``; None for a type that has none."""
    if content_type not in _FORMATS:
        return None
    return ImageCheck(content_type, filename, max_pixels=max_pixels, strip=strip)


Broken = Callable[[str], BrokenImage]


def _broken(filename: str, kind: str) -> Broken:
    def broken(problem: str) -> BrokenImage:
        return BrokenImage(f"{filename!r} is not a valid {kind} image: {problem}")

    return broken


# ------------------------------------------------------------------------------------- JPEG

# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_XMP_NS: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXTENSION: Final = b"http://ns.adobe.com/xmp/extension/\x00"
_ICC: Final = b"ICC_PROFILE\x00"


def _jpeg(filter_: MetadataFilter, found: _Found, broken: Broken) -> ParserGenerator:
    if (yield Read(2, "the SOI marker")) != b"\xff\xd8":
        raise broken("it does not start with an SOI marker")
    yield Emit(b"\xff\xd8")
    while True:
        marker = yield Read(2, "a marker")
        if marker[0] != 0xFF:
            raise broken(f"a marker was expected, found byte 0x{marker[0]:02x}")
        while marker[1] == 0xFF:  # fill bytes
            marker = b"\xff" + (yield Read(1, "a marker"))
        code = marker[1]
        if code in _STANDALONE:
            yield Emit(marker)
            continue
        if code in (0xD8, 0xD9, 0x00):
            raise broken(f"marker 0x{code:02x} before any image data")
        name = f"the 0x{code:02x} segment"
        (length,) = struct.unpack(">H", (yield Read(2, name)))
        if length < 2:
            raise broken(f"{name} has a length of {length}")
        payload = yield Read(length - 2, name)
        if code in _SOF:
            if len(payload) < 6:
                raise broken("its SOF segment is too short")
            height, width = struct.unpack_from(">HH", payload, 1)
            if not (width and height):
                raise broken(f"its frame is {width} x {height} pixels")
            found.size(width, height)
        kept = _jpeg_segment(filter_, code, payload)
        if kept is not None:
            yield Emit(marker + struct.pack(">H", len(kept) + 2) + kept)
        if code == 0xDA:  # SOS: the entropy-coded data, and then more scans, to EOI
            if not found.width:
                raise broken("its image data comes before any SOF segment")
            what = "its image data, before the EOI marker"
            if filter_.mode != "all":  # what follows the EOI is kept: only whether there is one
                yield RestHolding(b"\xff\xd9", what)
            else:  # where the image ends matters: what follows goes
                yield PassUntil(b"\xff\xd9", what)
                yield Rest(keep=False)


def _jpeg_segment(filter_: MetadataFilter, code: int, payload: bytes) -> bytes | None:
    if code == 0xE1:
        if payload.startswith(EXIF_PREFIX):
            kept = filter_.exif(payload)
            return None if kept is None else EXIF_PREFIX + kept.removeprefix(EXIF_PREFIX)
        if payload.startswith(_XMP_NS):
            packet = filter_.xmp(payload[len(_XMP_NS) :])
            return None if packet is None else _XMP_NS + packet
        if payload.startswith(_XMP_EXTENSION) and filter_.mode != "none":
            filter_.drop()  # the rest of a packet too large for one segment
            return None
        return filter_.other(payload)
    if code == 0xED:
        return filter_.iptc(payload)
    if code == 0xFE:  # COM
        return filter_.other(payload)
    if code == 0xE2:  # the ICC profile, or MPF / FlashPix application data
        return filter_.other(payload, display=payload.startswith(_ICC))
    if code == 0xE0 or code == 0xEE:  # JFIF, Adobe (its transform flag matters for colour)
        return payload
    if 0xE3 <= code <= 0xEF:
        return filter_.other(payload)
    return payload


# -------------------------------------------------------------------------------------- PNG

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT: Final = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_PNG_METADATA: Final = _PNG_TEXT | {b"eXIf", b"tIME", b"fcTL", b"IHDR"}
# Ancillary chunks that display needs (colour, transparency, animation): kept under `all`, which
# drops every other ancillary chunk (a lower-case first letter; critical chunks always stay).
_PNG_DISPLAY: Final = frozenset(
    {b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"cICP", b"mDCV", b"cLLI", b"tRNS", b"bKGD"}
    | {b"pHYs", b"acTL", b"fcTL", b"fdAT"}
)


def _png(filter_: MetadataFilter, found: _Found, broken: Broken) -> ParserGenerator:
    if (yield Read(8, "the PNG signature")) != _PNG_SIGNATURE:
        raise broken("it does not start with the PNG signature")
    yield Emit(_PNG_SIGNATURE)
    first, seen_data = True, False
    while True:
        header = yield ReadOrEnd(8, "a chunk header")
        if not header:
            raise broken("it ends before its IEND chunk (truncated)")
        length, chunk_type = struct.unpack(">I4s", header)
        if length > 0x7FFFFFFF or not chunk_type.isalpha():
            raise broken(f"a chunk header is malformed ({header.hex()})")
        name = f"the {chunk_type.decode()} chunk"
        if first != (chunk_type == b"IHDR"):
            raise broken("its first chunk is not IHDR" if first else "it has a second IHDR")
        first = False
        if chunk_type not in _PNG_METADATA or length > MAX_METADATA_UNIT:
            if chunk_type in _PNG_METADATA:
                raise broken(f"{name} is larger than {MAX_METADATA_UNIT} bytes")
            keep = chunk_type[0] < 0x61 or chunk_type in _PNG_DISPLAY or filter_.mode != "all"
            if keep:
                yield Emit(header)
            else:
                filter_.drop()
            crc = yield Pass(length, keep, name, zlib.crc32(chunk_type))
            stored_crc = yield Read(4, name)
            if struct.unpack(">I", stored_crc)[0] != crc:
                raise broken(f"{name} has a bad CRC")
            if keep:
                yield Emit(stored_crc)
            seen_data = seen_data or chunk_type == b"IDAT"
            if chunk_type == b"IEND":
                yield Rest(keep=filter_.mode != "all")
            continue
        data = yield Read(length, name)
        stored_crc = yield Read(4, name)
        if struct.unpack(">I", stored_crc)[0] != zlib.crc32(data, zlib.crc32(chunk_type)):
            raise broken(f"{name} has a bad CRC")
        kept = _png_chunk(filter_, found, broken, chunk_type, data, seen_data)
        if kept is data:
            yield Emit(header + data + stored_crc)
        elif kept is not None:
            crc = zlib.crc32(kept, zlib.crc32(chunk_type))
            yield Emit(struct.pack(">I4s", len(kept), chunk_type) + kept + struct.pack(">I", crc))


def _png_chunk(
    filter_: MetadataFilter,
    found: _Found,
    broken: Broken,
    chunk_type: bytes,
    data: bytes,
    seen_data: bool,
) -> bytes | None:
    if chunk_type == b"IHDR":
        if len(data) != 13:
            raise broken(f"its IHDR chunk has {len(data)} bytes, not 13")
        width, height = struct.unpack_from(">II", data)
        if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
            raise broken(f"its IHDR gives a size of {width} x {height}")
        found.size(width, height)
        return data
    if chunk_type == b"fcTL":  # an APNG frame; one before the first IDAT is the IDAT image
        if len(data) != 26:
            raise broken(f"an fcTL chunk has {len(data)} bytes, not 26")
        if seen_data:
            found.add_pixels(*struct.unpack_from(">II", data, 4))
        return data
    if chunk_type == b"eXIf":
        return filter_.exif(data)
    if chunk_type == b"tIME":
        return filter_.other(data)
    return filter_.png_text(chunk_type, data)


# ------------------------------------------------------------------------------------- WebP

_VP8X_EXIF: Final = 0x08
_VP8X_XMP: Final = 0x04
_VP8X_ANIMATION: Final = 0x02
_WEBP_IMAGE: Final = frozenset({b"VP8 ", b"VP8L", b"ANMF"})
_WEBP_DISPLAY: Final = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


def _webp(filter_: MetadataFilter, found: _Found, broken: Broken) -> ParserGenerator:
    header = yield Read(12, "the RIFF header")
    riff, riff_size, webp = struct.unpack("<4sI4s", header)
    if riff != b"RIFF" or webp != b"WEBP":
        raise broken("it does not start with a RIFF WEBP header")
    yield Emit(header)
    left, out_size = riff_size - 4, 4
    flags: int | None = None  # VP8X's, when the file has that chunk
    has_exif = has_xmp = has_image = False
    while left > 0:
        if left < 8:
            raise broken("its RIFF size ends inside a chunk header")
        chunk_header = yield Read(8, "a chunk header")
        fourcc, size = struct.unpack("<4sI", chunk_header)
        padded = size + (size & 1)
        name = f"the {fourcc.decode('latin-1')!r} chunk"
        if 8 + padded > left:
            raise broken(f"{name} runs past the RIFF size ({riff_size})")
        left -= 8 + padded
        if fourcc == b"VP8X":
            if not 10 <= size <= 64 or out_size != 4:
                raise broken("its VP8X chunk is misplaced or too short")
            data = yield Read(padded, name)
            flags = data[0]
            width = 1 + int.from_bytes(data[4:7], "little")
            height = 1 + int.from_bytes(data[7:10], "little")
            if flags & _VP8X_ANIMATION:
                found.width, found.height = width, height  # the frames are what count
            else:
                found.size(width, height)
            yield Emit(chunk_header + data)
            out_size += 8 + padded
            continue
        if fourcc in (b"EXIF", b"XMP ") and padded <= MAX_METADATA_UNIT:
            data = (yield Read(padded, name))[:size]
            kept = filter_.exif(data) if fourcc == b"EXIF" else filter_.xmp(data)
            if kept is not None:
                has_exif = has_exif or fourcc == b"EXIF"
                has_xmp = has_xmp or fourcc == b"XMP "
                pad = b"\x00" * (len(kept) & 1)
                yield Emit(struct.pack("<4sI", fourcc, len(kept)) + kept + pad)
                out_size += 8 + len(kept) + len(pad)
            continue
        # What is left: image data, and chunks that are not metadata or too large to filter.
        keep = fourcc in _WEBP_DISPLAY or filter_.mode == "none"
        if not keep and filter_.mode == "location":
            keep = fourcc not in (b"EXIF", b"XMP ")
        if not keep:
            filter_.drop()
        prefix = b""
        if fourcc in _WEBP_IMAGE:
            has_image = True
            prefix = yield from _webp_frame(found, broken, fourcc, size, flags)
        if keep:
            yield Emit(chunk_header + prefix)
            out_size += 8 + padded
        yield Pass(padded - len(prefix), keep, name)
    if not has_image:
        raise broken("it holds no image data (no VP8, VP8L or ANMF chunk)")
    if out_size != riff_size:
        found.patches.append((4, struct.pack("<I", out_size)))
    if flags is not None:
        new_flags = flags & ~(_VP8X_EXIF | _VP8X_XMP)
        new_flags |= (_VP8X_EXIF if has_exif else 0) | (_VP8X_XMP if has_xmp else 0)
        if new_flags != flags:
            found.patches.append((20, bytes([new_flags])))
    yield Rest(keep=filter_.mode != "all")


def _webp_frame(
    found: _Found, broken: Broken, fourcc: bytes, size: int, flags: int | None
) -> SubParser:
    """Reads the start of an image chunk for its size; returns the bytes read."""
    if fourcc == b"ANMF":
        head: bytes = yield Read(min(size, 16), "an ANMF frame header")
        if len(head) < 16:
            raise broken("an ANMF chunk is too short")
        found.add_pixels(
            1 + int.from_bytes(head[6:9], "little"), 1 + int.from_bytes(head[9:12], "little")
        )
        return head
    if fourcc == b"VP8 ":
        head = yield Read(min(size, 10), "the VP8 frame header")
        if len(head) < 10 or head[3:6] != b"\x9d\x01\x2a" or head[0] & 1:
            raise broken("its VP8 chunk does not start with a key frame")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", head, 6))
    else:
        head = yield Read(min(size, 5), "the VP8L header")
        if len(head) < 5 or head[0] != 0x2F:
            raise broken("its VP8L chunk has no VP8L signature")
        bits = int.from_bytes(head[1:5], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if not (width and height):
        raise broken(f"its frame is {width} x {height} pixels")
    if flags is None:
        found.size(width, height)
    return head


# -------------------------------------------------------------------------------------- GIF

_GIF_XMP: Final = b"XMP DataXMP"
_GIF_ICC: Final = b"ICCRGBG1012"
_GIF_LOOP: Final = frozenset({b"NETSCAPE2.0", b"ANIMEXTS1.0"})


def _gif(filter_: MetadataFilter, found: _Found, broken: Broken) -> ParserGenerator:
    header = yield Read(13, "the GIF header")
    if header[:6] not in (b"GIF87a", b"GIF89a"):
        raise broken("it does not start with GIF87a or GIF89a")
    width, height, packed = struct.unpack_from("<HHB", header, 6)
    if not (width and height):
        raise broken(f"its screen is {width} x {height} pixels")
    found.size(width, height)  # the canvas a decoder allocates
    yield Emit(header)
    if packed & 0x80:  # the global colour table
        yield Pass(3 << ((packed & 7) + 1), True, "the global colour table")
    frames = 0
    while True:
        introducer = (yield ReadOrEnd(1, "a block"))[:1]
        if not introducer:
            raise broken("it ends before its trailer (truncated)")
        if introducer == b";":  # the trailer
            yield Emit(introducer)
            yield Rest(keep=filter_.mode != "all")
            return
        if introducer == b",":  # an image: descriptor, local colour table, LZW data
            descriptor = yield Read(9, "an image descriptor")
            frame_width, frame_height, frame_packed = struct.unpack_from("<HHB", descriptor, 4)
            frames += 1
            if frames > 1:
                found.add_pixels(frame_width, frame_height)
            yield Emit(introducer + descriptor)
            if frame_packed & 0x80:
                yield Pass(3 << ((frame_packed & 7) + 1), True, "a local colour table")
            yield Pass(1, True, "an image's LZW code size")
            yield from _gif_sub_blocks(keep=True, what="an image's data")
        elif introducer == b"!":  # an extension: label, then sub-blocks
            label = yield Read(1, "an extension")
            if label in (b"\xf9", b"\x01"):  # graphic control, plain text: display
                yield Emit(introducer + label)
                yield from _gif_sub_blocks(keep=True, what="an extension")
                continue
            first = yield Read(1, "an extension")
            data = (yield Read(first[0], "an extension")) if first[0] else b""
            keep = _gif_extension(filter_, label, data)
            if keep:
                yield Emit(introducer + label + first + data)
            yield from _gif_sub_blocks(keep=keep, what="an extension")
        else:
            raise broken(f"a block starts with byte 0x{introducer[0]:02x}")


def _gif_extension(filter_: MetadataFilter, label: bytes, first: bytes) -> bool:
    """Whether an extension is kept, from its label and first sub-block (an application
    extension's identifier). Comments and XMP go under ``location`` and ``all`` (an XMP
    packet in GIF sub-blocks is not filtered in place), loop counts and ICC profiles stay."""
    if label == b"\xff" and (first in _GIF_LOOP or first == _GIF_ICC):
        return True
    if label == b"\xff" and first == _GIF_XMP and filter_.mode == "location":
        filter_.drop()
        return False
    return filter_.other(first) is not None


def _gif_sub_blocks(*, keep: bool, what: str) -> SubParser:
    """Sub-blocks (a length byte, that many bytes) through the empty one that ends them."""
    while True:
        length = yield Read(1, what)
        if keep:
            yield Emit(length)
        if not length[0]:
            return b""
        yield Pass(length[0], keep, what)


def _isobmff(filter_: MetadataFilter, found: _Found, broken: Broken) -> ParserGenerator:
    return isobmff_parser(filter_, found, broken, MAX_METADATA_UNIT)


_PARSERS: Final[dict[str, Callable[[MetadataFilter, _Found, Broken], ParserGenerator]]] = {
    "JPEG": _jpeg,
    "PNG": _png,
    "WebP": _webp,
    "GIF": _gif,
    "AVIF": _isobmff,
    "HEIC": _isobmff,
}
