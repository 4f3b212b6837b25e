"""Domain errors that carry their HTTP status.

The ingest pipeline and storage raise these without knowing anything about HTTP beyond the
status number (as tusd's ``NewError(code, msg, status)`` does); one middleware in
:mod:`clustr_aio.web.middlewares` turns them into ``{"detail": ...}`` responses.
"""

from __future__ import annotations

from typing import ClassVar


class ClustrError(Exception):
    """Base of every error a client may see; ``detail`` is shown to the client verbatim."""

    status: ClassVar[int] = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        """Response headers that go with the error (Retry-After, say)."""
        return {}


class MalformedUpload(ClustrError):
    """The body is not well-formed multipart (bad boundary, truncated part, nested multipart…)."""

    status = 400


class NoFilesUploaded(ClustrError):
    """The request carried no ``files`` part (406, as the original FastAPI service answered)."""

    status = 406


class UploadTooLarge(ClustrError):
    """A file, the request or the number of files crossed a configured limit."""

    status = 413


class UnsupportedFile(ClustrError):
    """The extension is not allowed, or the bytes are not what the extension claims."""

    status = 415


class ImageTooLarge(UploadTooLarge):
    """An image's header shows more pixels than ``MAX_IMAGE_PIXELS`` (a decompression bomb)."""


class BrokenImage(UnsupportedFile):
    """An image whose structure does not hold together: truncated, a bad CRC, a missing end."""


class InsufficientStorage(ClustrError):
    """The disk is full, or free space would drop below ``MIN_FREE_SPACE``."""

    status = 507


class ThumbnailUnavailable(ClustrError):
    """The stored image cannot be rendered (it passed the structure check, yet does not
    decode); remembered, so asking again costs no render."""

    status = 422


class ThumbnailsBusy(ClustrError):
    """The thumbnail queue is full: ask again after ``retry_after`` seconds."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ClientDisconnected(Exception):
    """The client went away mid-body. Not a ClustrError: there is nobody left to answer."""
