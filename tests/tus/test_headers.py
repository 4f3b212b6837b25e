"""The tus headers, parsed and checked (pure functions)."""

from __future__ import annotations

import base64

import pytest

from clustr_aio.domain.errors import BadRequest, UnsupportedProtocolVersion
from clustr_aio.tus.headers import (
    MAX_METADATA_VALUE,
    check_version,
    encode_metadata,
    http_date,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_size,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_metadata_round_trip_with_flags_and_utf8() -> None:
    header = f"filename {b64('日本.jpg')},is_confidential,type {b64('image/jpeg')}"
    parsed = parse_metadata(header)
    assert parsed == {"filename": "日本.jpg", "is_confidential": "", "type": "image/jpeg"}
    assert parse_metadata(encode_metadata(parsed)) == parsed


def test_metadata_values_lose_control_and_format_characters() -> None:
    hostile = b64("a\u202eb\x00c\r\nd.jpg")
    assert parse_metadata(f"filename {hostile}") == {"filename": "abcd.jpg"}
    combining = b64("e\u0301")
    assert parse_metadata(f"n {combining}") == {"n": "\u00e9"}  # NFC


@pytest.mark.parametrize(
    "header",
    [
        "filename",  # fine: a flag
        "",
    ],
)
def test_metadata_accepts(header: str) -> None:
    parse_metadata(header)


@pytest.mark.parametrize(
    "header",
    [
        "file name abc",
        f"k {b64('a')},k {b64('b')}",
        "k not*base64",
        f"k {base64.b64encode(bytes([0xFF, 0xFE])).decode()}",  # not UTF-8
        f"k {b64('x' * (MAX_METADATA_VALUE + 1))}",
        ",".join(f"k{n} {b64('v')}" for n in range(33)),
        f"{'k' * 65} {b64('v')}",
    ],
)
def test_metadata_refuses(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_metadata(header)


def test_version() -> None:
    check_version({"Tus-Resumable": "1.0.0"})
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        with pytest.raises(UnsupportedProtocolVersion) as refused:
            check_version(headers)
        assert refused.value.status == 412
        assert refused.value.headers() == {"Tus-Version": "1.0.0"}


def test_sizes() -> None:
    assert parse_size({"Upload-Offset": " 42 "}, "Upload-Offset") == 42
    assert parse_size({}, "Upload-Offset") is None
    for bad in ("-1", "1e3", "0x10", "", "1" * 20, "١٢"):
        with pytest.raises(BadRequest):
            parse_size({"Upload-Length": bad}, "Upload-Length")


def test_checksum() -> None:
    digest = bytes(range(32))
    parsed = parse_checksum(f"SHA256 {base64.b64encode(digest).decode()}")
    assert parsed is not None
    assert (parsed.algorithm, parsed.expected) == ("sha256", digest)
    assert parse_checksum(None) is None
    for bad in ("crc32 AAAA", "sha1 ***", "sha1", "md5 AAAA"):
        with pytest.raises(BadRequest):
            parse_checksum(bad)


def test_concat() -> None:
    assert parse_concat("partial") is not None
    final = parse_concat("final;http://h/api/tus/aa /api/tus/bb/")
    assert final is not None
    assert final.parts == ("aa", "bb")
    assert parse_concat(None) is None
    for bad in ("final;", "whole", "final"):
        with pytest.raises(BadRequest):
            parse_concat(bad)


def test_http_date() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
