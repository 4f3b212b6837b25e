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
    retry_after: int | None = None
    """Seconds to send as ``Retry-After``, for a refusal that is only for now."""
    per_file: ClassVar[bool] = False
    """A refusal of one file, not of the request: ``POST /api/upload?atomic=false`` answers it
    in that file's item and stores the others."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.file: str | None = None
        """The upload's file (as the client named it) that the error is about, if any."""
        self.index: int | None = None
        """That file's position among the request's files, from 0."""

    def about(self, file: str, index: int) -> None:
        self.file, self.index = file, index

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the body."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class MalformedUpload(ClustrError):
    """The body is not well-formed multipart (bad boundary, truncated part, nested multipart…)."""

    status = 400


class RequestTimeout(ClustrError):
    """The client sent too slowly: its headers, or its body's next byte, came too late."""

    status = 408


class NoFilesUploaded(ClustrError):
    """The request carried no ``files`` part (406, as the original FastAPI service answered)."""

    status = 406


class UploadTooLarge(ClustrError):
    """A file, or the number of files, crossed a configured limit."""

    status = 413
    per_file = True


class RequestTooLarge(UploadTooLarge):
    """The request body crossed MAX_REQUEST_SIZE."""

    per_file = False


class UnsupportedFile(ClustrError):
    """The extension is not allowed, or the bytes are not what the extension claims."""

    status = 415
    per_file = True


class DuplicateFile(ClustrError):
    """``DEDUPE=reject``: these bytes are stored already."""

    status = 409
    per_file = True


class NotFound(ClustrError):
    """No record of that id."""

    status = 404


class BadRequest(ClustrError):
    """A parameter or JSON body the API cannot take (a bad cursor, limit, id list…)."""

    status = 400


class ImageTooLarge(UploadTooLarge):
    """An image's header shows more pixels than ``MAX_IMAGE_PIXELS`` (a decompression bomb)."""


class BrokenImage(UnsupportedFile):
    """An image whose structure does not hold together: truncated, a bad CRC, a missing end."""


class ServerBusy(ClustrError):
    """Too many uploads at once (MAX_CONCURRENT_UPLOADS), or no file descriptor left."""

    status = 503
    retry_after = 1


class InsufficientStorage(ClustrError):
    """The disk is full, or free space would drop below ``MIN_FREE_SPACE``."""

    status = 507


class ThumbnailUnavailable(ClustrError):
    """The stored image cannot be rendered (it passed the structure check, yet does not
    decode); remembered, so asking again costs no render."""

    status = 422


class ThumbnailsBusy(ClustrError):
    """The thumbnail queue is full: ask again in a second."""

    status = 503
    retry_after = 1


class ClientDisconnected(Exception):
    """The client went away mid-body. Not a ClustrError: there is nobody left to answer."""


class EncodedBody(ClustrError):
    """The body has a Content-Encoding: compressed bodies are refused, never inflated."""

    status = 415


class Unauthorized(ClustrError):
    """AUTH=keys: no API key, or one that is unknown, revoked or expired."""

    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="clustr"'}


class Forbidden(ClustrError):
    """The key lacks the scope the route needs; or a file URL without a valid signature."""

    status = 403


class RateLimited(ClustrError):
    """A key (or, in the open mode, a client address) went over a rate limit."""

    status = 429

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class QuotaExceeded(InsufficientStorage):
    """The upload would take its owner's files over the key's storage quota."""


class Conflict(ClustrError):
    """The thing to create exists already (an API key's name)."""

    status = 409
