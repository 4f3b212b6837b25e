"""Image types from their first bytes (clustr_aio.domain.sniff)."""

from __future__ import annotations

import pytest

from clustr_aio.domain.errors import UnsupportedFile
from clustr_aio.domain.sniff import (
    KNOWN_TYPES,
    OCTET_STREAM,
    SNIFF_BYTES,
    detect_type,
    verify_content,
)
from tests.conftest import JPEG, PNG, WEBP

GIF = b"GIF89a" + bytes(20)
BMP = b"BM" + bytes(20)
TEXT = b"hello, this is text"


def test_sniff_bytes_covers_the_longest_signature() -> None:
    assert SNIFF_BYTES == 12  # WebP: "RIFF" size "WEBP"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (JPEG, "image/jpeg"),
        (PNG, "image/png"),
        (WEBP, "image/webp"),
        (b"\xff\xd8\xff", "image/jpeg"),  # the whole signature and nothing more
        (GIF, "image/gif"),
        (b"\x00\x00\x00\x1cftypavif", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1", "image/heic"),
        (b"\x00\x00\x00\x18ftypisom", None),  # an MP4 video
        (b"GIF87a", "image/gif"),
        (BMP, None),
        (TEXT, None),
        (b"", None),
        (b"\xff\xd8", None),
        (b"\x89PNG\r\n\x1a", None),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"RIFF\x00\x00\x00\x00WEB", None),
        (b"XRIFF\x00\x00\x00WEBP", None),
    ],
)
def test_detect_type(head: bytes, expected: str | None) -> None:
    found = detect_type(head[:SNIFF_BYTES])
    assert (found.content_type if found else None) == expected


@pytest.mark.parametrize(
    ("extension", "head", "expected"),
    [
        ("jpg", JPEG, "image/jpeg"),
        ("jpeg", JPEG, "image/jpeg"),
        ("png", PNG, "image/png"),
        ("webp", WEBP, "image/webp"),
        ("bin", TEXT, OCTET_STREAM),  # allowed by configuration, not an image type we know
        ("bin", JPEG, OCTET_STREAM),  # …and never sniffed
        ("csv", b"a,b\n", OCTET_STREAM),
    ],
)
def test_verify_content_accepts(extension: str, head: bytes, expected: str) -> None:
    assert verify_content(extension, head[:SNIFF_BYTES], filename=f"f.{extension}") == expected


@pytest.mark.parametrize(
    ("extension", "head", "message"),
    [
        ("png", JPEG, "holds image/jpeg data; expected image/png"),
        ("jpg", PNG, "holds image/png data; expected image/jpeg"),
        ("webp", JPEG, "holds image/jpeg data; expected image/webp"),
        ("jpg", TEXT, "not a known image type"),
        ("png", GIF, "holds image/gif data; expected image/png"),
        ("gif", BMP, "not a known image type"),
        ("jpg", b"\xff\xd8", "not a known image type"),
        ("webp", b"RIFF\x00\x00\x00\x00WAVEfmt ", "not a known image type"),
        ("jpg", b"", "is empty"),
        ("bin", b"", "is empty"),
    ],
)
def test_verify_content_refuses(extension: str, head: bytes, message: str) -> None:
    with pytest.raises(UnsupportedFile, match=message) as caught:
        verify_content(extension, head[:SNIFF_BYTES], filename="x.y")
    assert caught.value.status == 415
    assert "'x.y'" in caught.value.detail


def test_known_types_are_consistent() -> None:
    extensions = [ext for t in KNOWN_TYPES for ext in t.extensions]
    assert len(extensions) == len(set(extensions))  # one type per extension
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in extensions)
    assert {t.content_type for t in KNOWN_TYPES} == {
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/gif",
        "image/avif",
        "image/heic",
    }
