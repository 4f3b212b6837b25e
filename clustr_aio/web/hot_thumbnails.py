"""Hot thumbnail GETs answered from the connection (a :data:`~clustr_aio.web.quick.QuickResponder`):
a ``GET /api/files/{id}/thumbnail`` whose thumbnail the :class:`~clustr_aio.images.thumbnails.
Thumbnailer` remembers is sent from its cached file with the headers the route gives it, without
a request object, the routing, the middlewares or the response hooks (measured: the route's
0.23 ms of server CPU per GET against nginx's 0.03 ms; see the README's bench H).

Only what the route would answer the same way, with nothing to decide but the file: anything
else goes the ordinary way, which stays the reference (tests/http/test_hot_thumbnails.py
compares the two answers). So this answers only

- a plain ``GET`` over HTTP/1.1 on a connection that stays open, without a body, ``Origin``
  (CORS), ``If-None-Match`` (the route's 304), ``Authorization`` or ``X-API-Key``, with no
  query parameters but ``size``, ``format`` and, signed, ``expires`` and ``signature``, none
  repeated, and values the route accepts;
- when the request needs no key: ``AUTH=off`` with public files, or a valid signature
  (``PUBLIC_FILES=false``, any ``AUTH``), which admits to every owner's thumbnails; never with
  rate limits (each request takes a token, the route's work), nor with a bucket (another
  instance may have deleted the file);
- a thumbnail the thumbnailer found before (a deleted file is forgotten there; a file whose
  cached path no longer opens, deleted by another worker, is forgotten here and goes to the
  route, which asks the catalog).

Each answer is counted in ``/metrics`` and logged like the route's.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import HttpVersion11, hdrs
from aiohttp.http import SERVER_SOFTWARE

from clustr_aio.auth.signing import EXPIRES, SIGNATURE, verify_path
from clustr_aio.domain.errors import Forbidden, ThumbnailUnavailable
from clustr_aio.images.thumbnails import FORMATS, Thumbnail, Thumbnailer, ThumbnailFormat
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings
from clustr_aio.web.file_response import CONTENT_SECURITY_POLICY
from clustr_aio.web.middlewares import REQUEST_ID_HEADER, request_id_for
from clustr_aio.web.quick import QuickAnswer, http_date
from clustr_aio.web.routes.thumbnails import CACHE_CONTROL, negotiate_format

__all__ = ["ROUTE", "HotThumbnails"]

ROUTE: Final = "/api/files/{id}/thumbnail"
"""The route's template, as ``/metrics`` labels it."""
_PATH: Final = re.compile(r"/api/files/([0-9a-f-]{36})/thumbnail")
_PARAMETERS: Final = frozenset({"size", "format", EXPIRES, SIGNATURE})
_ORDINARY: Final = (
    hdrs.ORIGIN,
    hdrs.IF_NONE_MATCH,
    hdrs.AUTHORIZATION,
    "X-API-Key",
    hdrs.EXPECT,
    hdrs.CONTENT_LENGTH,
    hdrs.TRANSFER_ENCODING,
)
"""Headers that leave a request to the route: what it answers otherwise than with the file."""
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_SERVER: Final = (
    f"\r\nServer: {SERVER_SOFTWARE}\r\nX-Content-Type-Options: nosniff\r\n{REQUEST_ID_HEADER}: "
).encode()
"""What follows the date, up to the request id's value."""
_HEADS: Final = 4096
"""Response heads kept ready (all but the date and request id): one per thumbnail and Vary."""


class HotThumbnails:
    """The responder; :meth:`applies` says whether the settings let it answer anything."""

    def __init__(self, settings: Settings, thumbnailer: Thumbnailer, metrics: Metrics) -> None:
        self._thumbnailer = thumbnailer
        self._metrics = metrics
        self._sizes = {str(size): size for size in settings.thumbnail_sizes}
        self._default_size = settings.thumbnail_sizes[0]
        self._secrets = () if settings.public_files else settings.secret_key
        self._vary_origin = bool(settings.cors_origins)
        self._heads: dict[tuple[str, bool], bytes] = {}
        self.answered = 0
        """GETs answered here (the tests tell the two paths apart by it)."""

    @staticmethod
    def applies(settings: Settings) -> bool:
        no_key_needed = settings.auth == "off" or not settings.public_files
        limited = settings.rate_limit_requests is not None
        return settings.storage == "local" and no_key_needed and not limited

    def __call__(self, message: Any) -> QuickAnswer | None:
        started = time.perf_counter()
        if message.method != "GET" or message.version != HttpVersion11 or message.should_close:
            return None
        path, _, query = message.path.partition("?")
        match = _PATH.fullmatch(path)
        if match is None:
            return None
        headers = message.headers
        for header in _ORDINARY:
            if header in headers:
                return None
        parameters = _parameters(query)
        if parameters is None:
            return None
        if self._secrets:
            try:
                verify_path(path, parameters, self._secrets)
            except Forbidden:
                return None  # the route refuses it, logs and counts the refusal
        text = parameters.get("size")
        size = self._default_size if text is None else self._sizes.get(text)
        name = parameters.get("format")
        fmt = FORMATS.get(name) if name is not None else _negotiated(headers.get(hdrs.ACCEPT))
        if size is None or fmt is None:
            return None  # a 400 of the route's
        file_key = match.group(1)
        try:
            thumbnail = self._thumbnailer.cached(file_key, size, fmt)
        except ThumbnailUnavailable:
            return None  # the route's 422
        if thumbnail is None:
            return None
        try:
            fd = os.open(thumbnail.path, _OPEN_FLAGS)
        except OSError:  # removed by another worker's delete: the catalog will say
            self._thumbnailer.forget(file_key)
            return None
        request_id = request_id_for(headers.get(REQUEST_ID_HEADER))
        head = b"".join(
            (
                self._head(thumbnail, vary_accept=name is None),
                http_date(),
                _SERVER,
                request_id.encode(),
                self._tail,
            )
        )
        self._metrics.count("GET", ROUTE, 200, time.perf_counter() - started)
        self.answered += 1
        return QuickAnswer(head, fd, thumbnail.size, 200, request_id)

    @functools.cached_property
    def _tail(self) -> bytes:
        return b"\r\nVary: Origin\r\n\r\n" if self._vary_origin else b"\r\n\r\n"

    def _head(self, thumbnail: Thumbnail, *, vary_accept: bool) -> bytes:
        """The head up to ``Date``'s value, in the order and spelling the route's has."""
        key = (str(thumbnail.path), vary_accept)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            lines = [
                "HTTP/1.1 200 OK",
                f"Cache-Control: {CACHE_CONTROL}",
                f"Content-Type: {thumbnail.content_type}",
                f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}",
                *(["Vary: Accept"] if vary_accept else []),
                f"Content-Length: {thumbnail.size}",
                f"Etag: {thumbnail.etag}",
                "Date: ",
            ]
            head = self._heads[key] = "\r\n".join(lines).encode()
        return head


@functools.lru_cache(maxsize=1024)
def _parameters(query: str) -> dict[str, str] | None:
    """The query's parameters, if it has only those this answers, none repeated."""
    pairs = parse_qsl(query, keep_blank_values=True)
    parameters = dict(pairs)
    if len(parameters) != len(pairs) or not parameters.keys() <= _PARAMETERS:
        return None
    return parameters


@functools.lru_cache(maxsize=256)
def _negotiated(accept: str | None) -> ThumbnailFormat:
    return FORMATS[negotiate_format(accept)]
