"""What :data:`STRIP_METADATA` keeps of each metadata unit the structure parsers meet: an EXIF
block, an XMP packet, an IPTC block, a text chunk, a comment.

The parsers (:mod:`clustr_aio.images.structure`) cut a file into segments or chunks, hand each
metadata payload here, and write back what comes out (or nothing); the compressed image data is
never touched, so the stored file decodes to the same pixels. The modes:

- ``none``: everything is kept;
- ``location``: the GPS IFD leaves the EXIF (in place, same length: see
  :func:`~clustr_aio.images.exif.strip_gps`); GPS and location properties leave XMP packets
  (a packet where any would remain after that is dropped whole); an IPTC block with location
  datasets (city, sub-location, province, country) is dropped, as are the raw-profile text
  chunks ImageMagick writes, which exiftool reads as EXIF, XMP or IPTC;
- ``all``: EXIF becomes a minimal one holding only the orientation (none when upright); XMP,
  IPTC, comments, text chunks and other application data go; what display needs stays (the ICC
  profile, JFIF, Adobe's colour transform, PNG's colour chunks).
"""

from __future__ import annotations

import re
import zlib
from typing import Final, Literal

from clustr_aio.images.exif import ExifError, orientation_exif, read_orientation, strip_gps, tiff_of

__all__ = ["MetadataFilter", "StripMode"]

StripMode = Literal["location", "all", "none"]

# An XMP property that names a place: exif:GPSLatitude, photoshop:City, Iptc4xmpCore:Location,
# Iptc4xmpExt:LocationShown, ... in any namespace prefix.
_PLACE = (
    r"[A-Za-z][\w.-]*:(?:GPS\w*|City|State|Country|CountryCode|CountryName|Location\w*"
    r"|Sublocation|ProvinceState|WorldRegion)"
)
_PLACE_ATTRIBUTE: Final = re.compile(rf"""\s+{_PLACE}\s*=\s*(?:"[^"]*"|'[^']*')""".encode())
_PLACE_EMPTY_ELEMENT: Final = re.compile(rf"<({_PLACE})\b[^>]*/>".encode())
_PLACE_ELEMENT: Final = re.compile(rf"<({_PLACE})\b[^>]*>.*?</\1\s*>".encode(), re.DOTALL)
_PLACE_NAME: Final = re.compile(rf"[<\s]{_PLACE}\b".encode())

# IPTC IIM datasets of record 2 that name a place: 90 city, 92 sub-location, 95 province or
# state, 100 country code, 101 country name (tag marker 0x1C, record, dataset).
_IPTC_PLACE: Final = re.compile(rb"\x1c\x02[\x5a\x5c\x5f\x64\x65]")

# PNG text keywords whose text is another metadata format, hex-encoded (ImageMagick, exiftool).
_RAW_PROFILE: Final = re.compile(rb"Raw profile type (?:exif|app1|xmp|iptc|8bim)", re.IGNORECASE)
XMP_KEYWORD: Final = b"XML:com.adobe.xmp"
_EMPTY_XMP: Final = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/><?xpacket end="w"?>'
)


class MetadataFilter:
    """The decisions for one file; ``removed`` tells whether anything was taken out, and
    ``orientation`` is the EXIF orientation seen (1 when none)."""

    __slots__ = ("_seen_exif", "mode", "orientation", "removed")

    def __init__(self, mode: StripMode) -> None:
        self.mode: StripMode = mode
        self.orientation = 1
        self.removed = False
        self._seen_exif = False

    def _changed(self, before: bytes, after: bytes | None) -> bytes | None:
        if after != before:
            self.removed = True
        return after

    def drop(self) -> None:
        """A unit that is left out whatever it holds (under ``location`` or ``all``)."""
        self.removed = True

    def exif(self, payload: bytes) -> bytes | None:
        """An EXIF payload (a TIFF structure, with or without the ``Exif\\0\\0`` prefix) as it
        is to be stored, or None to leave it out."""
        prefix, tiff = tiff_of(payload)
        try:
            orientation = read_orientation(tiff)
        except ExifError:
            orientation = None
        if not self._seen_exif and orientation is not None:
            self.orientation = orientation
        self._seen_exif = True
        if self.mode == "none":
            return payload
        if orientation is None:
            return self._changed(payload, None)  # what cannot be read cannot be vouched for
        if self.mode == "all":
            kept = prefix + orientation_exif(orientation) if orientation != 1 else None
            return self._changed(payload, kept)
        try:
            stripped = strip_gps(tiff)
        except ExifError:
            return self._changed(payload, None)
        return payload if stripped is None else self._changed(payload, prefix + stripped)

    def exif_in_place(self, payload: bytes) -> bytes:
        """:meth:`exif` at the same length (HEIF items, whose offsets must not move), padded
        with zeros. What would be left out whole becomes a minimal, upright EXIF instead, since
        decoders (libavif) refuse an Exif item that is not one."""
        kept = self.exif(payload)
        if kept is None:
            kept = tiff_of(payload)[0] + orientation_exif(1)
        if len(kept) > len(payload):
            return bytes(len(payload))
        return kept + bytes(len(payload) - len(kept))

    def set_orientation(self, orientation: int) -> None:
        """The orientation display applies, known from elsewhere than EXIF (HEIF's irot and
        imir): EXIF's is then not used."""
        self.orientation = orientation
        self._seen_exif = True

    def xmp_in_place(self, packet: bytes) -> bytes:
        """:meth:`xmp` at the same length: properties removed become spaces (XML white
        space), a packet removed whole an empty packet padded with spaces."""
        if self.mode == "none":
            return packet
        if self.mode == "location":
            if not _PLACE_NAME.search(packet):
                return packet
            scrubbed = _PLACE_ATTRIBUTE.sub(_blank, packet)
            scrubbed = _PLACE_EMPTY_ELEMENT.sub(_blank, scrubbed)
            scrubbed = _PLACE_ELEMENT.sub(_blank, scrubbed)
            if not _PLACE_NAME.search(scrubbed):
                self.removed = True
                return scrubbed
        self.removed = True
        if len(packet) < len(_EMPTY_XMP):
            return b" " * len(packet)
        return _EMPTY_XMP + b" " * (len(packet) - len(_EMPTY_XMP))

    def xmp(self, packet: bytes) -> bytes | None:
        if self.mode == "none":
            return packet
        if self.mode == "all":
            return self._changed(packet, None)
        if not _PLACE_NAME.search(packet):
            return packet
        scrubbed = _PLACE_ATTRIBUTE.sub(b"", packet)
        scrubbed = _PLACE_EMPTY_ELEMENT.sub(b"", scrubbed)
        scrubbed = _PLACE_ELEMENT.sub(b"", scrubbed)
        return self._changed(packet, None if _PLACE_NAME.search(scrubbed) else scrubbed)

    def iptc(self, payload: bytes) -> bytes | None:
        """A Photoshop/IPTC block (JPEG APP13)."""
        if self.mode == "all" or (self.mode == "location" and _IPTC_PLACE.search(payload)):
            return self._changed(payload, None)
        return payload

    def other(self, payload: bytes, *, display: bool = False) -> bytes | None:
        """Anything else that is not image data: kept unless ``all`` (and not needed for
        ``display``)."""
        if self.mode == "all" and not display:
            return self._changed(payload, None)
        return payload

    def png_text(self, chunk_type: bytes, data: bytes) -> bytes | None:
        """A tEXt, zTXt or iTXt chunk's data: an XMP packet in iTXt is filtered as XMP."""
        keyword = data.split(b"\x00", 1)[0]
        if self.mode == "none":
            return data
        if self.mode == "all" or _RAW_PROFILE.fullmatch(keyword):
            return self._changed(data, None)
        if chunk_type == b"iTXt" and keyword == XMP_KEYWORD:
            return self._changed(data, _png_xmp(self, data))
        return data


def _blank(match: re.Match[bytes]) -> bytes:
    return b" " * len(match[0])


def _png_xmp(filter_: MetadataFilter, data: bytes) -> bytes | None:
    """An iTXt XMP chunk's data, its packet filtered (and stored uncompressed), or None."""
    # keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
    try:
        keyword, rest = data.split(b"\x00", 1)
        compressed, rest = rest[0], rest[2:]
        language, translated, text = rest.split(b"\x00", 2)
        packet = zlib.decompress(text) if compressed else text
    except (ValueError, IndexError, zlib.error):
        return None
    kept = filter_.xmp(packet)
    if kept is None:
        return None
    if kept == packet:
        return data
    return b"\x00".join((keyword, b"\x00\x00" + language, translated, kept))
