"""The URLs of stored files in the API's answers (``preview_url``, and any other file URL):
public ones, or with PUBLIC_FILES=false signed ones (:func:`clustr_aio.auth.signing.sign_path`,
which verifies them too)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web

from clustr_aio.auth.keys import OPEN
from clustr_aio.auth.signing import sign_path, verify_path
from clustr_aio.domain.errors import Forbidden
from clustr_aio.web.base_url import client_address, request_base_url
from clustr_aio.web.keys import GUARD, SETTINGS

__all__ = ["FileLinks", "file_links", "refuse_unsigned"]


@dataclass(frozen=True, slots=True)
class FileLinks:
    base_url: str
    """scheme://host[:port] the client reached the server at."""
    files_path: str
    """UPLOAD_URL_PATH."""
    secrets: tuple[str, ...]
    """Empty: files are public, URLs are not signed."""
    ttl: int

    def url(self, escaped_path: str, query: str = "") -> str:
        """The absolute URL of ``escaped_path`` (and ``query``, escaped too), signed when files
        are not public. The signature covers the path and the query as the server will see
        them (``request.path`` and ``request.query``: unescaped): a thumbnail URL's ``size``
        cannot be changed, nor a ``format`` added."""
        if self.secrets:
            parameters = parse_qsl(query, keep_blank_values=True)
            signature = sign_path(
                unquote(escaped_path), self.secrets, self.ttl, parameters=parameters
            )
            query = f"{query}&{signature}" if query else signature
        return f"{self.base_url}{escaped_path}?{query}" if query else self.base_url + escaped_path

    def stored_file(self, stored_name: str) -> str:
        return self.url(f"{self.files_path}/{quote(stored_name)}")


def file_links(request: web.Request) -> FileLinks:
    settings = request.app[SETTINGS]
    return FileLinks(
        base_url=request_base_url(request),
        files_path=settings.upload_url_path,
        secrets=() if settings.public_files else settings.secret_key,
        ttl=settings.signed_url_ttl,
    )


def refuse_unsigned(request: web.Request) -> Forbidden | None:
    """With PUBLIC_FILES=false, the refusal of a file URL that :class:`FileLinks` did not sign
    (or whose signature expired), logged and counted; None when it may be served. Ask before
    looking for the file: the answer must not depend on whether it exists."""
    settings = request.app[SETTINGS]
    if settings.public_files:
        return None
    try:
        verify_path(request.path, request.query, settings.secret_key)
    except Forbidden as error:
        request.app[GUARD].refused(error, OPEN, client_address(request), "bad_signature")
        return error
    return None
