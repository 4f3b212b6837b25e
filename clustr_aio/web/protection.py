"""What an upload must pass before its body is read, against hostile or broken clients.

- **No Content-Encoding.** aiohttp would inflate a gzip/deflate/br body as it is read: 500 KB on
  the wire became 513 MB on disk, past every check made on ``Content-Length`` and past a proxy's
  ``client_max_body_size``. Images are compressed already, so a compressed body is refused with
  415 before a byte of it is read (and the server is run with ``auto_decompress=False``, so no
  path can inflate one).
- **Uploads at a time** (``MAX_CONCURRENT_UPLOADS`` per process): one more is a 503 with
  ``Retry-After`` before its body is read (instead of ``100 Continue`` when it asks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

from aiohttp import hdrs, web

from clustr_aio.compat import HttpProcessingError
from clustr_aio.domain.errors import ClientDisconnected, EncodedBody, MalformedUpload, ServerBusy

__all__ = ["UploadSlots", "body_errors", "refuse_content_encoding"]

_ENCODED_BODY: Final = (
    "request bodies with a Content-Encoding are not accepted: send the files uncompressed "
    "(a compressed body would be inflated past the upload limits)"
)


def refuse_content_encoding(headers: Mapping[str, str]) -> None:
    """Raise :class:`EncodedBody` (415) unless the body's Content-Encoding is absent or
    ``identity``. The client's value is not echoed."""
    encoding = headers.get(hdrs.CONTENT_ENCODING)
    if encoding is None:
        return
    codings = [coding.strip().lower() for coding in encoding.split(",")]
    if any(coding not in ("", "identity") for coding in codings):
        raise EncodedBody(_ENCODED_BODY)


class UploadSlots:
    """A count of the uploads being received, and its limit (per process, on the loop)."""

    __slots__ = ("limit", "taken")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def check(self) -> None:
        """Raise :class:`ServerBusy` (503, Retry-After) if no slot is free."""
        if self.taken >= self.limit:
            raise ServerBusy("too many uploads at once; retry shortly")

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        """Hold a slot for the duration, or raise :class:`ServerBusy` at once."""
        self.check()
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


@contextlib.contextmanager
def body_errors() -> Iterator[None]:
    """What reading a request body can raise, as the domain's errors: a broken connection is
    :class:`ClientDisconnected`, a broken body (bad chunked encoding, short of its
    Content-Length) a :class:`MalformedUpload`."""
    try:
        yield
    except ConnectionError as error:
        raise ClientDisconnected() from error
    except HttpProcessingError as error:
        raise MalformedUpload(f"malformed request body: {error.message}") from None
    except web.RequestPayloadError:  # what the parser sets on the body stream mid-read
        raise MalformedUpload("malformed request body") from None
