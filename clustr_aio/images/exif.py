"""EXIF (a TIFF structure) read and edited in place: the orientation, the GPS IFD removed, and a
minimal EXIF holding only an orientation. Pure functions over bytes; no I/O.

Only what the upload path needs is parsed: IFD0's entries and, for removal, the GPS IFD's. Every
offset is bounds-checked; a structure that does not hold together raises :class:`ExifError`, and
callers that must not publish what they cannot read (location stripping) then drop the EXIF.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "EXIF_PREFIX",
    "ExifError",
    "orientation_exif",
    "read_orientation",
    "strip_gps",
    "tiff_of",
]

EXIF_PREFIX: Final = b"Exif\x00\x00"
"""What precedes the TIFF header in a JPEG APP1 segment (and, against their specs, in some PNG
eXIf and WebP EXIF chunks)."""

ORIENTATION: Final = 0x0112
GPS_IFD: Final = 0x8825
# Bytes per value of each TIFF field type (1 BYTE ... 13 IFD), by type number.
_TYPE_SIZES: Final = (1, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4)
_MAX_ENTRIES: Final = 1000


class ExifError(ValueError):
    """The bytes are not a TIFF structure that holds together."""


def tiff_of(payload: bytes) -> tuple[bytes, bytes]:
    """``(prefix, tiff)``: the TIFF structure of an EXIF payload and what preceded it."""
    if payload.startswith(EXIF_PREFIX):
        return EXIF_PREFIX, payload[len(EXIF_PREFIX) :]
    return b"", payload


class _Tiff:
    __slots__ = ("data", "order")

    def __init__(self, data: bytes | bytearray) -> None:
        if data[:4] == b"II*\x00":
            self.order = "<"
        elif data[:4] == b"MM\x00*":
            self.order = ">"
        else:
            raise ExifError("no TIFF header")
        self.data = data

    def u16(self, at: int) -> int:
        self._check(at, 2)
        return int(struct.unpack_from(self.order + "H", self.data, at)[0])

    def u32(self, at: int) -> int:
        self._check(at, 4)
        return int(struct.unpack_from(self.order + "I", self.data, at)[0])

    def _check(self, at: int, size: int) -> None:
        if at < 0 or at + size > len(self.data):
            raise ExifError("an offset points outside the EXIF data")

    def entries(self, ifd: int) -> range:
        """The byte positions of the IFD's 12-byte entries."""
        count = self.u16(ifd)
        if count > _MAX_ENTRIES:
            raise ExifError("an IFD has too many entries")
        self._check(ifd + 2, 12 * count + 4)
        return range(ifd + 2, ifd + 2 + 12 * count, 12)

    def find(self, ifd: int, tag: int) -> int | None:
        return next((at for at in self.entries(ifd) if self.u16(at) == tag), None)

    def value_span(self, entry: int) -> tuple[int, int] | None:
        """Where an entry's value lies outside the entry (offset, size); None when inline."""
        kind = self.u16(entry + 2)
        size = (_TYPE_SIZES[kind] if kind < len(_TYPE_SIZES) else 1) * self.u32(entry + 4)
        if size <= 4:
            return None
        offset = self.u32(entry + 8)
        self._check(offset, size)
        return offset, size


def read_orientation(tiff: bytes) -> int:
    """IFD0's Orientation (1-8); 1 when absent or out of range."""
    t = _Tiff(tiff)
    entry = t.find(t.u32(4), ORIENTATION)
    if entry is None or t.u16(entry + 2) != 3:  # SHORT
        return 1
    value = t.u16(entry + 8)
    return value if 1 <= value <= 8 else 1


def strip_gps(tiff: bytes) -> bytes | None:
    """The TIFF structure without its GPS IFD, same length (every other offset stays valid): the
    pointer entry is taken out of IFD0 and the GPS IFD with its values is overwritten with
    zeros. None when there was no GPS IFD."""
    data = bytearray(tiff)
    t = _Tiff(data)
    ifd0 = t.u32(4)
    entry = t.find(ifd0, GPS_IFD)
    if entry is None:
        return None
    gps = t.u32(entry + 8)
    count = t.u16(ifd0)
    end = ifd0 + 2 + 12 * count + 4
    try:
        spans = [(gps, 2 + 12 * len(t.entries(gps)) + 4)]
        spans += [span for at in t.entries(gps) if (span := t.value_span(at)) is not None]
    except ExifError:
        spans = []  # a GPS pointer to nowhere: removing the pointer is all there is to do
    if any(offset < end and ifd0 < offset + size for offset, size in spans):
        raise ExifError("the GPS IFD overlaps IFD0")
    for offset, size in spans:
        data[offset : offset + size] = bytes(size)
    # Close the gap in IFD0: the later entries and the next-IFD pointer move up 12 bytes.
    data[entry:end] = data[entry + 12 : end] + bytes(12)
    struct.pack_into(t.order + "H", data, ifd0, count - 1)
    return bytes(data)


def orientation_exif(orientation: int) -> bytes:
    """A TIFF structure with one tag, IFD0's Orientation (big-endian, 26 bytes)."""
    return b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, ORIENTATION, 3, 1, orientation, 0, 0)
