"""Hot thumbnail GETs answered from the connection (a :data:`~clustr_aio.web.quick.QuickResponder`):
a ``GET /api/files/{id}/thumbnail`` whose thumbnail the :class:`~clustr_aio.images.thumbnails.
Thumbnailer` remembers is answered with the bytes and headers the route gives it, without a
request object, the routing, the middlewares or the response hooks, and, when the connection's
parser holds nothing, without aiohttp's parser either (:mod:`clustr_aio.web.plain_head`).
Measured: the route's 0.23 ms of server CPU per GET against nginx's 0.03 ms; see the README's
bench H for what this path costs.

Only what the route would answer the same way, with nothing to decide but the file: anything
else goes the ordinary way, which stays the reference (tests/web/test_hot_thumbnails.py
compares the two answers, byte for byte but the date and request id). So this answers only

- a plain ``GET`` over HTTP/1.1 on a connection that stays open, without a body, whose headers
  are all among :data:`ANSWERABLE` (what changes nothing in the route's answer, or what this
  answers as it does: ``Accept`` when ``format`` is absent, ``If-None-Match`` with the route's
  304 when it names the thumbnail, ``X-Request-ID``) — so never ``Origin`` (CORS),
  ``Authorization``, ``X-API-Key``, ``Range`` or a body's headers — with no query parameters but
  ``size``, ``format`` and, signed, ``expires`` and ``signature``, none repeated, and values the
  route accepts;
- when the request needs no key: ``AUTH=off`` with public files, or a valid signature
  (``PUBLIC_FILES=false``, any ``AUTH``), which admits to every owner's thumbnails; never with
  rate limits (each request takes a token, the route's work), nor with a bucket (another
  instance may have deleted the file);
- a thumbnail the thumbnailer found before: a file deleted here is forgotten there, and one
  evicted from its memory is no longer answered here either.

**In memory.** The thumbnails' bytes (up to :data:`KEPT_BODY` each, :data:`HOT_MEMORY` in all
per process, the least recently sent dropped first) are kept with their ready-made response
heads, so a hot GET is one write of bytes already there, not an open, read and close of the
cached file. They are kept only while the host's thumbnail removals counter (:attr:`~clustr_aio.
images.thumbnails.Thumbnailer.removals`) stays where it was when they were read: a delete in
any worker moves it once the thumbnails are gone from the disk, and every worker then drops
what it kept and reads the disk again (where a deleted file's thumbnails no longer open: it is
forgotten, and the route asks the catalog). While a removal is under way nothing is kept.

Each answer is counted in ``/metrics`` and logged like the route's.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import hdrs
from aiohttp.http import SERVER_SOFTWARE

from clustr_aio.auth.signing import EXPIRES, SIGNATURE, verify_path
from clustr_aio.catalog.changes import ChangeCounter
from clustr_aio.domain.errors import Forbidden, ThumbnailUnavailable
from clustr_aio.images.thumbnails import FORMATS, Thumbnail, Thumbnailer, ThumbnailFormat
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings
from clustr_aio.web.file_response import CONTENT_SECURITY_POLICY
from clustr_aio.web.middlewares import REQUEST_ID_HEADER, request_id_for
from clustr_aio.web.plain_head import ReadHeads, keep_alive_head
from clustr_aio.web.quick import QuickAnswer, http_date, plain_message
from clustr_aio.web.routes.thumbnails import CACHE_CONTROL, names_etag, negotiate_format

__all__ = [
    "ANSWERABLE",
    "HOT_MEMORY",
    "KEPT_BODY",
    "PREFIX",
    "ROUTE",
    "HotThumbnails",
    "KeptThumbnails",
]

ROUTE: Final = "/api/files/{id}/thumbnail"
"""The route's template, as ``/metrics`` labels it."""
PREFIX: Final = "/api/files/"
"""What the targets this answers start with."""
HOT_MEMORY: Final = 4 * 1024 * 1024
"""Bytes of thumbnails kept in memory per process: a gallery's worth of 256-px WebPs (5-15 KB
each)."""
KEPT_BODY: Final = 64 * 1024
"""Larger thumbnails are sent from their file each time (``sendfile``), not kept."""
ANSWERABLE: Final = frozenset(
    {
        "host",
        "user-agent",
        "accept",
        "accept-encoding",  # the route compresses nothing
        "accept-language",
        "connection",  # keep-alive only: the parser's should_close, or checked below
        "cache-control",
        "pragma",
        "referer",
        "cookie",  # no route reads cookies
        "dnt",
        "priority",
        "sec-ch-ua",
        "sec-ch-ua-mobile",
        "sec-ch-ua-platform",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-fetch-user",
        "sec-gpc",
        "upgrade-insecure-requests",
        "if-none-match",
        "x-request-id",
        "x-forwarded-for",  # what a proxy adds: the access log and the route see the peer
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
        "via",
    }
)
"""The request headers (lower-case) with which this may answer; any other leaves the request
to the route."""
_ANSWERABLE_BYTES: Final = frozenset(name.encode() for name in ANSWERABLE)
_PATH: Final = re.compile(r"/api/files/([0-9a-f-]{36})/thumbnail")
_PARAMETERS: Final = frozenset({"size", "format", EXPIRES, SIGNATURE})
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_SERVER: Final = (
    f"\r\nServer: {SERVER_SOFTWARE}\r\nX-Content-Type-Options: nosniff\r\n{REQUEST_ID_HEADER}: "
).encode()
"""What follows the date, up to the request id's value."""
_ANSWERS: Final = 2048
"""Request targets (with their Accept) whose answers are kept ready, about 1 KB each."""

_Read = tuple[str, str | None, str | None, str | None]
"""Of a plain head: its target, ``Accept``, ``If-None-Match`` and ``X-Request-ID``."""


@dataclass(slots=True)
class _Hot:
    """What a request target (with its ``Accept``, when it has no ``format``) is answered
    with, as long as the thumbnailer still knows ``thumbnail``."""

    file_key: str
    size: int
    fmt: ThumbnailFormat
    thumbnail: Thumbnail
    path: str
    ok: bytes
    """The 200's head up to ``Date``'s value, in the order and spelling the route's has."""
    not_modified: bytes
    """The same of the 304's."""
    expires: int | None
    """A signed URL's end (Unix seconds), after which the route refuses it."""


class KeptThumbnails:
    """Thumbnails' bytes kept in memory under one value of the removals counter (see the
    module documentation), at most ``limit`` bytes in all, the least recently sent dropped."""

    def __init__(self, removals: Callable[[], ChangeCounter | None], limit: int) -> None:
        self._open_removals = removals
        self._removals: ChangeCounter | None = None
        self._limit = limit
        self._kept: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._under: int | None = None
        """The counter's value the kept bytes were read under."""

    def get(self, path: str, size: int) -> bytes | int | None:
        """The ``size`` bytes of the thumbnail at ``path``; or, when they are not kept (too
        large, a removal under way), its file, open; None when it is not on the disk any more
        (or not of that size)."""
        removals = self._removals
        if removals is None:  # no cache folder yet, or not looked for: none kept so far
            removals = self._removals = self._open_removals()
        now = None if removals is None else removals.stable()
        if now != self._under:
            self._kept.clear()
            self._bytes = 0
            self._under = now
        kept = self._kept.get(path)
        if kept is not None:
            self._kept.move_to_end(path)
            return kept
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return None
        if now is None or size > KEPT_BODY:
            return fd
        try:
            body = os.pread(fd, size + 1, 0)  # one more: a file longer than it was is wrong too
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(body) != size:
            return None
        self._kept[path] = body
        self._bytes += size
        while self._bytes > self._limit:
            self._bytes -= len(self._kept.popitem(last=False)[1])
        return body

    @property
    def kept(self) -> int:
        """Bytes kept now."""
        return self._bytes


class HotThumbnails:
    """The responder; :meth:`applies` says whether the settings let it answer anything."""

    def __init__(self, settings: Settings, thumbnailer: Thumbnailer, metrics: Metrics) -> None:
        self._thumbnailer = thumbnailer
        self._metrics = metrics
        self._sizes = {str(size): size for size in settings.thumbnail_sizes}
        self._default_size = settings.thumbnail_sizes[0]
        self._secrets = () if settings.public_files else settings.secret_key
        self._tail = b"\r\nVary: Origin\r\n\r\n" if settings.cors_origins else b"\r\n\r\n"
        self._answers: dict[tuple[str, str | None], _Hot] = {}
        self._plain = ReadHeads(_read_plain)
        """Plain heads as sent (a client sends the same bytes for the same thumbnail), read."""
        self.bodies = KeptThumbnails(thumbnailer.removals, HOT_MEMORY)
        self.answered = 0
        """GETs answered here (the tests tell the paths apart by these counts)."""
        self.answered_plain = 0
        """Of them, those answered from the raw bytes (:meth:`answer_plain`)."""

    @staticmethod
    def applies(settings: Settings) -> bool:
        no_key_needed = settings.auth == "off" or not settings.public_files
        limited = settings.rate_limit_requests is not None
        return settings.storage == "local" and no_key_needed and not limited

    def __call__(self, message: Any) -> QuickAnswer | None:
        started = time.perf_counter()
        if not plain_message(message, ANSWERABLE):
            return None
        headers = message.headers
        return self._answer(
            message.path,
            headers.get(hdrs.ACCEPT),
            headers.get(hdrs.IF_NONE_MATCH),
            headers.get(REQUEST_ID_HEADER),
            started,
            0,
        )

    def answer_plain(self, data: bytes, start: int) -> QuickAnswer | None:
        started = time.perf_counter()
        found = self._plain.get(data, start)
        if found is None:
            return None
        read, end = found
        target, accept, if_none_match, offered_id = read
        answer = self._answer(target, accept, if_none_match, offered_id, started, end)
        if answer is not None:
            self.answered_plain += 1
        return answer

    def _answer(
        self,
        target: str,
        accept: str | None,
        if_none_match: str | None,
        offered_id: str | None,
        started: float,
        end: int,
    ) -> QuickAnswer | None:
        key = (target, accept)
        hot = self._answers.get(key)
        if hot is not None and self._known(hot) is not hot.thumbnail:
            del self._answers[key]  # forgotten by the thumbnailer (deleted, evicted)
            hot = None
        if hot is None:
            hot = self._hot(target, accept)
            if hot is None:
                return None
            if len(self._answers) >= _ANSWERS:
                self._answers.clear()
            self._answers[key] = hot
        if hot.expires is not None and hot.expires <= time.time():
            return None  # the route's 403
        body = self.bodies.get(hot.path, hot.thumbnail.size)
        if body is None:  # removed from the disk (another worker's delete): the catalog says
            self._thumbnailer.forget(hot.file_key)
            del self._answers[key]
            return None
        fd = None
        if if_none_match is not None and names_etag(if_none_match, hot.thumbnail.etag):
            if isinstance(body, int):
                os.close(body)
            head, body, status, size = hot.not_modified, b"", 304, 0
        else:
            head, status, size = hot.ok, 200, hot.thumbnail.size
            if isinstance(body, int):
                fd, body = body, b""
        request_id = request_id_for(offered_id)
        data = b"".join((head, http_date(), _SERVER, request_id.encode(), self._tail, body))
        if status == 304:
            size = len(data)  # what aiohttp logs as the length of an answer without a body
        self._metrics.count("GET", ROUTE, status, time.perf_counter() - started)
        self.answered += 1
        return QuickAnswer(data, fd, size, status, request_id, "GET", target, end)

    def _known(self, hot: _Hot) -> Thumbnail | None:
        try:
            return self._thumbnailer.cached(hot.file_key, hot.size, hot.fmt)
        except ThumbnailUnavailable:
            return None

    def _hot(self, target: str, accept: str | None) -> _Hot | None:
        """How to answer ``target``, if this may (and the thumbnailer knows the thumbnail)."""
        path, mark, query = target.partition("?")
        match = _PATH.fullmatch(path)
        if match is None or (mark and not query):
            return None  # an empty query: the route's log says the path without its "?"
        parameters = _parameters(query)
        if parameters is None:
            return None
        expires = None
        if self._secrets:
            try:
                verify_path(path, parameters, self._secrets)
            except Forbidden:
                return None  # the route refuses it, logs and counts the refusal
            expires = int(parameters[EXPIRES])
        text = parameters.get("size")
        size = self._default_size if text is None else self._sizes.get(text)
        name = parameters.get("format")
        fmt = FORMATS.get(name) if name is not None else _negotiated(accept)
        if size is None or fmt is None:
            return None  # a 400 of the route's
        file_key = match.group(1)
        try:
            thumbnail = self._thumbnailer.cached(file_key, size, fmt)
        except ThumbnailUnavailable:
            return None  # the route's 422
        if thumbnail is None:
            return None
        vary = ["Vary: Accept"] if name is None else []
        kinds = [
            f"Cache-Control: {CACHE_CONTROL}",
            f"Content-Type: {thumbnail.content_type}",
            f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}",
        ]
        ok = [
            "HTTP/1.1 200 OK",
            *kinds,
            *vary,
            f"Content-Length: {thumbnail.size}",
            f"Etag: {thumbnail.etag}",
            "Date: ",
        ]
        not_modified = [
            "HTTP/1.1 304 Not Modified",
            *kinds,
            *vary,
            f"Etag: {thumbnail.etag}",
            "Date: ",
        ]
        return _Hot(
            file_key,
            size,
            fmt,
            thumbnail,
            str(thumbnail.path),
            "\r\n".join(ok).encode(),
            "\r\n".join(not_modified).encode(),
            expires,
        )


def _read_plain(data: bytes, start: int) -> _Read | None:
    """What the answer depends on, of the plain head at ``data[start]``, if this may answer."""
    head = keep_alive_head(data, start, _ANSWERABLE_BYTES)
    if head is None:
        return None
    headers = head.headers
    return (
        head.target,
        _text(headers.get(b"accept")),
        _text(headers.get(b"if-none-match")),
        _text(headers.get(b"x-request-id")),
    )


def _text(value: bytes | None) -> str | None:
    """A header value :func:`~clustr_aio.web.plain_head.plain_head` checked (ASCII) as text."""
    return None if value is None else value.decode("ascii")


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
