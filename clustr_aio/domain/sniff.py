"""Detect an image type from its first bytes, and check it against the file's extension."""

from __future__ import annotations

from dataclasses import dataclass

from clustr_aio.domain.errors import UnsupportedFile

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ImageType:
    content_type: str
    extensions: frozenset[str]
    magic: tuple[tuple[int, bytes | frozenset[bytes]], ...]
    """(offset, bytes) pairs that must all match; a set of bytes (of one length) is a choice."""

    def matches(self, head: bytes) -> bool:
        return all(_found(head, at, sig) for at, sig in self.magic)


def _found(head: bytes, at: int, sig: bytes | frozenset[bytes]) -> bool:
    if isinstance(sig, bytes):
        return head[at : at + len(sig)] == sig
    return head[at : at + 4] in sig  # an ISOBMFF brand


def _length(sig: bytes | frozenset[bytes]) -> int:
    return len(sig) if isinstance(sig, bytes) else max(len(s) for s in sig)


# ISOBMFF major brands (ftyp at byte 4, the brand at 8) of still AVIF and HEIF/HEIC images.
AVIF_BRANDS = frozenset({b"avif"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1"})


KNOWN_TYPES: tuple[ImageType, ...] = (
    ImageType("image/jpeg", frozenset({"jpg", "jpeg"}), ((0, b"\xff\xd8\xff"),)),
    ImageType("image/png", frozenset({"png"}), ((0, b"\x89PNG\r\n\x1a\n"),)),
    ImageType("image/webp", frozenset({"webp"}), ((0, b"RIFF"), (8, b"WEBP"))),
    ImageType("image/gif", frozenset({"gif"}), ((0, b"GIF8"), (5, b"a"))),  # GIF87a, GIF89a
    ImageType("image/avif", frozenset({"avif"}), ((4, b"ftyp"), (8, AVIF_BRANDS))),
    ImageType("image/heic", frozenset({"heic", "heif"}), ((4, b"ftyp"), (8, HEIF_BRANDS))),
)
"""The image types whose bytes are checked (each needs a parser in
:mod:`clustr_aio.images.structure`). GIF, AVIF and HEIC are off by default: not in
``ALLOWED_EXTENSIONS``."""

STORED_CONTENT_TYPES: tuple[str, ...] = (*(t.content_type for t in KNOWN_TYPES), OCTET_STREAM)
"""What ``content_type`` of an upload item can be: a sniffed image type, or octet-stream for an
allowed extension that is not a known image type."""

SNIFF_BYTES = max(at + _length(sig) for t in KNOWN_TYPES for at, sig in t.magic)
"""How many leading bytes :func:`detect_type` needs to decide."""

_BY_EXTENSION = {ext: t for t in KNOWN_TYPES for ext in t.extensions}


def type_for_extension(extension: str) -> ImageType | None:
    """The known type of files named ``.extension`` (lower case, without the dot), if any."""
    return _BY_EXTENSION.get(extension)


def detect_type(head: bytes) -> ImageType | None:
    """The known type whose magic bytes ``head`` starts with, if any."""
    return next((t for t in KNOWN_TYPES if t.matches(head)), None)


def verify_content(extension: str, head: bytes, *, filename: str) -> str:
    """The content type of a file whose name ends in ``extension`` and whose bytes start with
    ``head`` (at least ``SNIFF_BYTES`` of them, or all of a shorter file).

    Raises :class:`UnsupportedFile` when the file is empty or its bytes are not what the
    extension claims. Extensions that are allowed but not a known image type (say ``bin``) are
    stored as ``application/octet-stream``.
    """
    if not head:
        raise UnsupportedFile(f"{filename!r} is empty")
    claimed = _BY_EXTENSION.get(extension)
    if claimed is None:
        return OCTET_STREAM
    if claimed.matches(head):
        return claimed.content_type
    actual = detect_type(head)
    found = f"{actual.content_type} data" if actual else "data that is not a known image type"
    raise UnsupportedFile(
        f"{filename!r} is named .{extension} but holds {found}; expected {claimed.content_type}"
    )
