"""AVIF and HEIC (HEIF, ISO base media file format): the structure parser and the in-place
metadata edits, driven like the others by :class:`~clustr_aio.images.stream.Parser`.

The top-level boxes are walked to the end of the file (one that ends inside a box is
truncated). ``ftyp`` and ``meta`` are read whole (at most
:data:`~clustr_aio.images.structure.MAX_METADATA_UNIT`): the primary item (``pitm``) and its
properties (``ipma`` into ``ipco``) give the size (``ispe``) and the rotation and mirroring
(``irot``, ``imir``, which display applies: they are the ``orientation`` reported, and a
quarter turn swaps width and height). ``iinf`` and ``iloc`` say where the EXIF and XMP items'
bytes are; they are edited **in place, at the same length**, so that no offset in ``iloc``
changes: in ``mdat`` as those bytes pass (held only for the length of the item), in ``idat``
inside ``meta``. Everything else (``mdat``'s image data) passes through.

Limits: an item whose bytes came before the ``meta`` box, an item in several extents, and an
item in another file are not edited; under ``location`` or ``all`` such a file is refused
(415), as storing it would publish what the mode promises to remove.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from clustr_aio.domain.errors import BrokenImage
from clustr_aio.images.metadata import MetadataFilter
from clustr_aio.images.stream import Emit, ParserGenerator, Pass, Read, ReadOrEnd, Rest

__all__ = ["isobmff_parser"]

Broken = Callable[[str], BrokenImage]

# irot (quarter turns anticlockwise) -> the EXIF orientation that displays the same way.
_ROTATION_ORIENTATION: Final = (1, 8, 3, 6)
_MIRRORED_ORIENTATION: Final = (2, 7, 4, 5)


class Sized(Protocol):
    """What the parser reports the image's size to (structure.py's ``_Found``)."""

    def size(self, width: int, height: int) -> None: ...


@dataclass(slots=True)
class _Meta:
    primary: int | None = None
    exif_items: set[int] = field(default_factory=set)
    xmp_items: set[int] = field(default_factory=set)
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)
    """item id -> (construction method, [(offset, length), ...])."""
    properties: list[tuple[bytes, bytes]] = field(default_factory=list)
    associations: dict[int, list[int]] = field(default_factory=dict)
    idat: int | None = None
    """Offset of the idat box's data within meta's body."""


def isobmff_parser(
    filter_: MetadataFilter, found: Sized, broken: Broken, max_unit: int
) -> ParserGenerator:
    offset = 0  # of the next box, in the input (= output: every edit keeps the length)
    edits: list[tuple[int, int, bool]] = []  # (file offset, length, is_exif), to come in mdat
    seen_ftyp = seen_meta = False
    while True:
        header = yield ReadOrEnd(8, "a box header")
        if not header:
            break
        size, kind = struct.unpack(">I4s", header)
        name = f"the {kind.decode('latin-1')!r} box"
        if size == 1:
            large = yield Read(8, name)
            header += large
            (size,) = struct.unpack(">Q", large)
        if not seen_ftyp and kind != b"ftyp":
            raise broken("its first box is not ftyp")
        if size == 0:  # to the end of the file: only image data can be that
            if kind != b"mdat" or edits:
                raise broken(f"{name} has no size")
            yield Emit(header)
            yield Rest(keep=True)
            return
        if size < len(header):
            raise broken(f"{name} has a size of {size}")
        body = size - len(header)
        yield Emit(header)
        if kind in (b"ftyp", b"meta"):
            if body > max_unit:
                raise broken(f"{name} is larger than {max_unit} bytes")
            data = yield Read(body, name)
            if kind == b"meta":
                data = _meta_box(
                    filter_, found, broken, data, offset + len(header), edits, max_unit
                )
                seen_meta = True
            seen_ftyp = True
            yield Emit(data)
        else:
            start, end = offset + len(header), offset + size
            at = start
            for edit_at, length, is_exif in sorted(edits):
                if start <= edit_at and edit_at + length <= end:
                    yield Pass(edit_at - at, True, name)
                    item = yield Read(length, name)
                    yield Emit(_edited(filter_, item, is_exif))
                    at = edit_at + length
            yield Pass(end - at, True, name)
        offset += size
    if not seen_meta:
        raise broken("it has no meta box")
    if any(edit_at >= offset for edit_at, _, _ in edits):
        raise broken("its metadata lies past its end (truncated)")
    yield Rest(keep=True)


def _edited(filter_: MetadataFilter, item: bytes, is_exif: bool) -> bytes:
    kept = _edit_exif(filter_, item) if is_exif else filter_.xmp_in_place(item)
    if kept != item:
        filter_.removed = True
    return kept


def _edit_exif(filter_: MetadataFilter, item: bytes) -> bytes:
    """An Exif item: a 4-byte offset to the TIFF header, then (often ``Exif\\0\\0`` and) TIFF."""
    if len(item) < 4:
        return item
    start = 4 + int.from_bytes(item[:4], "big")
    return item[:start] + filter_.exif_in_place(item[start:])


def _meta_box(
    filter_: MetadataFilter,
    found: Sized,
    broken: Broken,
    data: bytes,
    body_offset: int,
    edits: list[tuple[int, int, bool]],
    max_unit: int,
) -> bytes:
    """Reads ``meta`` (a FullBox), reports the size, queues the mdat edits; returns meta with
    its idat items edited."""
    meta = _Meta()
    try:
        for kind, start, end in _boxes(data, 4, len(data)):
            _meta_child(meta, data, kind, start, end)
    except (struct.error, ValueError, IndexError):
        raise broken("its meta box is malformed") from None
    if meta.primary is None:
        raise broken("it has no primary item (pitm)")
    indices = meta.associations.get(meta.primary, [])
    if not all(0 <= i <= len(meta.properties) for i in indices):
        raise broken("its primary item has a property that is not there")
    props = [meta.properties[i - 1] for i in indices if i]  # 0: no property
    ispe = next((body for kind, body in props if kind == b"ispe"), None)
    if ispe is None or len(ispe) < 12:
        raise broken("its primary item has no size (ispe)")
    width, height = struct.unpack_from(">II", ispe, 4)
    if not (width and height):
        raise broken(f"its primary item is {width} x {height} pixels")
    rotation = next((body[0] & 3 for kind, body in props if kind == b"irot" and body), 0)
    mirrored = any(kind == b"imir" for kind, _ in props)
    table = _MIRRORED_ORIENTATION if mirrored else _ROTATION_ORIENTATION
    filter_.set_orientation(table[rotation])  # what display applies; EXIF's is not used
    found.size(width, height)
    if filter_.mode == "none":
        return data
    edited = bytearray(data)
    items = [(i, True) for i in meta.exif_items] + [(i, False) for i in meta.xmp_items]
    for item, is_exif in items:
        method, extents = meta.locations.get(item, (0, []))
        if len(extents) != 1 or method not in (0, 1):
            raise broken("a metadata item is stored in a way that cannot be filtered")
        at, length = extents[0]
        if length > max_unit:
            raise broken(f"a metadata item is larger than {max_unit} bytes")
        if method == 0:
            if at < body_offset:
                raise broken("a metadata item comes before the meta box and cannot be filtered")
            edits.append((at, length, is_exif))
            continue
        if meta.idat is None:
            raise broken("a metadata item refers to a missing idat box")
        at += meta.idat
        edited[at : at + length] = _edited(filter_, data[at : at + length], is_exif)
    return bytes(edited)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of the boxes in ``data[start:end]``."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, at + 8)
            head = 16
        elif size == 0:
            size = end - at
        if size < head or at + size > end:
            raise ValueError("a box runs past its parent")
        yield kind, at + head, at + size
        at += size
    if at != end:
        raise ValueError("trailing bytes in a box")


def _meta_child(meta: _Meta, data: bytes, kind: bytes, start: int, end: int) -> None:
    version = data[start]
    if kind == b"pitm":
        meta.primary = struct.unpack_from(">H" if version == 0 else ">I", data, start + 4)[0]
    elif kind == b"iinf":
        first = start + (6 if version == 0 else 8)
        for child, child_start, _ in _boxes(data, first, end):
            if child == b"infe":
                _item_info(meta, data, child_start)
    elif kind == b"iloc":
        _item_locations(meta, data, start)
    elif kind == b"iprp":
        for child, child_start, child_end in _boxes(data, start, end):
            if child == b"ipco":
                meta.properties = [
                    (k, data[s:e]) for k, s, e in _boxes(data, child_start, child_end)
                ]
            elif child == b"ipma":
                _associations(meta, data, child_start)
    elif kind == b"idat":
        meta.idat = start


def _item_info(meta: _Meta, data: bytes, start: int) -> None:
    version = data[start]
    if version < 2:
        return  # no item types before version 2
    at = start + 4
    if version == 2:
        (item,) = struct.unpack_from(">H", data, at)
        at += 2
    else:
        (item,) = struct.unpack_from(">I", data, at)
        at += 4
    item_type = data[at + 2 : at + 6]
    at += 6
    at = data.index(b"\x00", at) + 1  # item_name
    if item_type == b"Exif":
        meta.exif_items.add(item)
    elif item_type == b"mime":
        content_type = data[at : data.index(b"\x00", at)]
        if content_type == b"application/rdf+xml":
            meta.xmp_items.add(item)


def _item_locations(meta: _Meta, data: bytes, start: int) -> None:
    version = data[start]
    at = start + 4
    sizes = data[at] >> 4, data[at] & 15, data[at + 1] >> 4, data[at + 1] & 15
    offset_size, length_size, base_size, index_size = sizes
    at += 2
    if version < 2:
        (count,) = struct.unpack_from(">H", data, at)
        at += 2
    else:
        (count,) = struct.unpack_from(">I", data, at)
        at += 4
    for _ in range(count):
        item, at = _uint(data, at, 2 if version < 2 else 4)
        method = 0
        if version in (1, 2):
            method, at = _uint(data, at, 2)
            method &= 15
        at += 2  # data_reference_index
        base, at = _uint(data, at, base_size)
        extent_count, at = _uint(data, at, 2)
        extents = []
        for _ in range(extent_count):
            if version in (1, 2) and index_size:
                at += index_size
            extent_offset, at = _uint(data, at, offset_size)
            extent_length, at = _uint(data, at, length_size)
            extents.append((base + extent_offset, extent_length))
        meta.locations[item] = (method, extents)


def _associations(meta: _Meta, data: bytes, start: int) -> None:
    version, flags = data[start], int.from_bytes(data[start + 1 : start + 4], "big")
    (count,) = struct.unpack_from(">I", data, start + 4)
    at = start + 8
    for _ in range(count):
        item, at = _uint(data, at, 2 if version < 1 else 4)
        n = data[at]
        at += 1
        indices = []
        for _ in range(n):
            if flags & 1:
                value, at = _uint(data, at, 2)
                indices.append(value & 0x7FFF)
            else:
                indices.append(data[at] & 0x7F)
                at += 1
        meta.associations[item] = indices


def _uint(data: bytes, at: int, size: int) -> tuple[int, int]:
    if size not in (0, 2, 4, 8):
        raise ValueError(f"a field of {size} bytes")
    return (int.from_bytes(data[at : at + size], "big") if size else 0), at + size
