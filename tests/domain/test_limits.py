"""Upload limits and the counting reader (clustr_aio.domain.limits)."""

from __future__ import annotations

import re

import pytest

from clustr_aio.domain.errors import UploadTooLarge
from clustr_aio.domain.limits import CountingReader, UploadLimits

LIMITS = UploadLimits(max_file_size=100, max_request_size=1000, max_files=3)


def reader_of(*chunks: bytes) -> tuple[CountingReader[bytes], list[bytes]]:
    """A CountingReader over ``chunks`` (then b""), and the list of chunks not yet read."""
    pending = list(chunks)

    async def read() -> bytes:
        return pending.pop(0) if pending else b""

    return LIMITS.counting(read), pending


def test_limits_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        UploadLimits(100, 1000, 3)  # type: ignore[call-arg]


@pytest.mark.parametrize("length", [None, 0, 999, 1000])
def test_declared_length_within_the_limit(length: int | None) -> None:
    LIMITS.check_declared_length(length)


def test_declared_length_over_the_limit() -> None:
    with pytest.raises(UploadTooLarge, match="1000 bytes") as caught:
        LIMITS.check_declared_length(1001)
    assert caught.value.status == 413


def test_file_size() -> None:
    LIMITS.check_file_size(100, "a.jpg")
    with pytest.raises(
        UploadTooLarge, match=re.escape("'a.jpg' is larger than the limit of 100 bytes")
    ):
        LIMITS.check_file_size(101, "a.jpg")


def test_file_count() -> None:
    LIMITS.check_file_count(3)
    with pytest.raises(UploadTooLarge, match="at most 3"):
        LIMITS.check_file_count(4)


async def test_counting_reader_passes_chunks_through_and_counts() -> None:
    reader, _ = reader_of(b"a" * 400, b"b" * 600)
    assert await reader() == b"a" * 400
    assert await reader() == b"b" * 600
    assert reader.bytes_read == 1000  # exactly the limit is fine
    assert await reader() == b""
    assert reader.bytes_read == 1000


async def test_counting_reader_raises_as_soon_as_the_limit_is_crossed() -> None:
    reader, pending = reader_of(b"a" * 999, b"bb", b"never read", b"nor this")
    await reader()
    with pytest.raises(UploadTooLarge, match="request body is larger than the limit of 1000"):
        await reader()
    assert reader.bytes_read == 1001
    assert pending == [b"never read", b"nor this"]


async def test_counting_reader_uses_the_given_error() -> None:
    async def read() -> bytes:
        return b"x" * 10

    reader = CountingReader(read, limit=5, error=lambda: RuntimeError("custom"))
    with pytest.raises(RuntimeError, match="custom"):
        await reader()


async def test_counting_reader_lets_read_errors_through() -> None:
    async def read() -> bytes:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        await LIMITS.counting(read)()
