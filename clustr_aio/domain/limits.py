"""Upload limits and the byte counters that enforce them.

aiohttp's ``client_max_size`` only guards ``request.post()``/``read()``; a streamed body is
unbounded unless we count it ourselves, so every byte read from the request passes through a
:class:`CountingReader`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass
from typing import Generic, TypeVar

from clustr_aio.domain.errors import RequestTooLarge, UploadTooLarge

_Chunk = TypeVar("_Chunk", bound=Sized)
ReadChunk = Callable[[], Awaitable[_Chunk]]
"""What a body is read by: the next chunk of it (bytes, or a window of a reused buffer)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadLimits:
    max_file_size: int
    """Bytes in one stored file."""
    max_request_size: int
    """Bytes in one request body, all parts, headers and boundaries included."""
    max_files: int
    """File parts in one request."""

    def check_declared_length(self, content_length: int | None) -> None:
        """Refuse a body whose declared length is already over the limit, before reading it."""
        if content_length is not None and content_length > self.max_request_size:
            raise self._request_too_large()

    def check_file_size(self, size: int, filename: str) -> None:
        if size > self.max_file_size:
            raise UploadTooLarge(
                f"{filename!r} is larger than the limit of {self.max_file_size} bytes per file"
            )

    def check_file_count(self, count: int) -> None:
        if count > self.max_files:
            raise UploadTooLarge(f"too many files: at most {self.max_files} per request")

    def _request_too_large(self) -> RequestTooLarge:
        return RequestTooLarge(
            f"request body is larger than the limit of {self.max_request_size} bytes"
        )

    def counting(self, read: ReadChunk[_Chunk]) -> CountingReader[_Chunk]:
        return CountingReader(read, limit=self.max_request_size, error=self._request_too_large)


class CountingReader(Generic[_Chunk]):
    """Wraps a ``read`` callable, counting bytes and raising once more than ``limit`` arrive."""

    __slots__ = ("_error", "_limit", "_read", "bytes_read")

    def __init__(
        self, read: ReadChunk[_Chunk], *, limit: int, error: Callable[[], Exception]
    ) -> None:
        self._read = read
        self._limit = limit
        self._error = error
        self.bytes_read = 0

    async def __call__(self) -> _Chunk:
        chunk = await self._read()
        self.bytes_read += len(chunk)
        if self.bytes_read > self._limit:
            raise self._error()
        return chunk
