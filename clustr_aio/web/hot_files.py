"""Stored-file GETs answered from the connection (a :data:`~clustr_aio.web.quick.QuickResponder`):
a plain ``GET {UPLOAD_URL_PATH}/{name}`` of a file on this machine's disk is answered with the
head the route gives it and the file's bytes (``sendfile``), without a request object, the
routing, the middlewares or the response hooks, and, when the connection's parser holds
nothing, without aiohttp's parser either (:mod:`clustr_aio.web.plain_head`).

Measured with ``wrk -t1 -c16`` GETs of a 498 KB JPEG on the loaded 2-core machine: the route's
0.27 ms of user CPU per GET (0.39 ms in all, the kernel's copy included) against nginx's 0.12 ms
in all; see the README's bench S for what this path costs.

The route stays the reference (tests/web/test_hot_files.py compares the two answers, byte for
byte but the date and request id), so this answers only what the route would answer the same
way, with nothing to decide but the file:

- a plain ``GET`` over HTTP/1.1 on a connection that stays open, whose headers are all among
  :data:`ANSWERABLE` (those of :mod:`~clustr_aio.web.hot_thumbnails` but ``If-None-Match``):
  never ``Range``, ``If-*`` (the route's 206, 304, 412, 416), ``Origin`` (CORS), nor a body's;
- a name of letters, digits and ``._~-`` only (no escape to decode) that does not start with a
  dot, in one path segment right under the prefix: what :meth:`~clustr_aio.storage.local.
  LocalStorage.path_of` locates, so never a temporary file, the catalog or a sub-folder;
- with ``PUBLIC_FILES=true`` and no query; with ``PUBLIC_FILES=false``, a valid, unexpired
  signature (``expires`` and ``signature`` only), which the route would accept;
- a regular file that opens without following a symlink, of at most :data:`LARGEST` bytes
  (what the socket does not take at once is read into the transport's buffer: see
  :func:`~clustr_aio.web.sendfile.send_head_and_file_now`).

Anything else (a missing file, a symlink, a folder, a refused signature) is left to the route,
which answers and logs it. The file is opened for each GET: a file deleted (by any worker) is
the route's 404 at once, and nothing is kept but each name's head, made again when the file's
size or time changes.

Each answer is counted in ``/metrics`` and logged like the route's.
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
import time
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl

from aiohttp import hdrs
from aiohttp.http import SERVER_SOFTWARE

from clustr_aio.auth.signing import EXPIRES, SIGNATURE, verify_path
from clustr_aio.domain.errors import Forbidden
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings
from clustr_aio.storage.local import LocalStorage
from clustr_aio.web.file_response import served_headers
from clustr_aio.web.hot_thumbnails import ANSWERABLE as THUMBNAIL_ANSWERABLE
from clustr_aio.web.middlewares import REQUEST_ID_HEADER, request_id_for
from clustr_aio.web.plain_head import ReadHeads, keep_alive_head
from clustr_aio.web.quick import QuickAnswer, http_date, plain_message

__all__ = ["ANSWERABLE", "LARGEST", "HotFiles"]

ANSWERABLE: Final = THUMBNAIL_ANSWERABLE - {"if-none-match"}
"""The request headers (lower-case) with which this may answer; any other leaves the request
to the route."""
LARGEST: Final = 4 * 1024 * 1024
"""Larger files go to the route, which waits for the client between blocks instead of
buffering what the socket does not take."""
_ANSWERABLE_BYTES: Final = frozenset(name.encode() for name in ANSWERABLE)
_NAME: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")
_PARAMETERS: Final = frozenset({EXPIRES, SIGNATURE})
# As the route's fast path opens: no symlink, and a FIFO planted by hand does not block.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SERVER: Final = (
    f"\r\nServer: {SERVER_SOFTWARE}\r\nX-Content-Type-Options: nosniff\r\n{REQUEST_ID_HEADER}: "
).encode()
"""What follows the date, up to the request id's value."""
_HEADS: Final = 4096
"""Names whose heads are kept, about 300 bytes each."""

_Read = tuple[str, str | None]
"""Of a plain head: its target and ``X-Request-ID``."""


class _Head(NamedTuple):
    mtime_ns: int
    size: int
    head: bytes
    """The 200's head up to ``Date``'s value, in the order and spelling the route's has."""


class HotFiles:
    """The responder; :meth:`applies` says whether the settings let it answer anything."""

    def __init__(self, settings: Settings, storage: LocalStorage, metrics: Metrics) -> None:
        self._storage = storage
        self._metrics = metrics
        self._prefix = settings.upload_url_path.rstrip("/") + "/"
        self._prefix_bytes = b"GET " + self._prefix.encode()
        self._route = f"{self._prefix}{{filename}}"
        self._secrets = () if settings.public_files else settings.secret_key
        self._tail = b"\r\nVary: Origin\r\n\r\n" if settings.cors_origins else b"\r\n\r\n"
        self._heads: dict[str, _Head] = {}
        self._plain = ReadHeads(_read_plain)
        """Plain heads as sent (a client sends the same bytes for the same file), read."""
        self.answered = 0
        """GETs answered here (the tests tell the paths apart by these counts)."""
        self.answered_plain = 0
        """Of them, those answered from the raw bytes (:meth:`answer_plain`)."""

    @property
    def prefix(self) -> str:
        """What the targets this answers start with (``UPLOAD_URL_PATH`` and a slash)."""
        return self._prefix

    @staticmethod
    def applies(settings: Settings) -> bool:
        return settings.storage == "local"

    def __call__(self, message: Any) -> QuickAnswer | None:
        started = time.perf_counter()
        if not plain_message(message, ANSWERABLE):
            return None
        headers = message.headers
        return self._answer(message.path, headers.get(REQUEST_ID_HEADER), started, 0)

    def answer_plain(self, data: bytes, start: int) -> QuickAnswer | None:
        started = time.perf_counter()
        if not data.startswith(self._prefix_bytes, start):
            return None
        found = self._plain.get(data, start)
        if found is None:
            return None
        read, end = found
        target, offered_id = read
        answer = self._answer(target, offered_id, started, end)
        if answer is not None:
            self.answered_plain += 1
        return answer

    def _answer(
        self, target: str, offered_id: str | None, started: float, end: int
    ) -> QuickAnswer | None:
        if not target.startswith(self._prefix):
            return None
        name, mark, query = target[len(self._prefix) :].partition("?")
        if _NAME.fullmatch(name) is None or not self._admitted(target, mark, query):
            return None
        path = self._storage.path_of(name)
        if path is None:
            return None
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return None  # the route's 404 or 403
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > LARGEST:
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        head = self._head(name, st)
        request_id = request_id_for(offered_id)
        data = b"".join((head, http_date(), _SERVER, request_id.encode(), self._tail))
        self._metrics.count("GET", self._route, 200, time.perf_counter() - started)
        self.answered += 1
        return QuickAnswer(data, fd, st.st_size, 200, request_id, "GET", target, end)

    def _admitted(self, target: str, mark: str, query: str) -> bool:
        """Whether the route would serve the file at ``target`` without asking more."""
        if not self._secrets:
            return not mark  # a query (even an empty one) is the route's to log as sent
        parameters = _parameters(query)
        if parameters is None:
            return False
        try:
            verify_path(target.partition("?")[0], parameters, self._secrets)
        except Forbidden:
            return False  # the route refuses it, logs and counts the refusal
        return True

    def _head(self, name: str, st: os.stat_result) -> bytes:
        kept = self._heads.get(name)
        if kept is not None and kept.mtime_ns == st.st_mtime_ns and kept.size == st.st_size:
            return kept.head
        lines = [
            "HTTP/1.1 200 OK",
            *(f"{key}: {value}" for key, value in served_headers(name).items()),
            f"{hdrs.CONTENT_LENGTH}: {st.st_size}",
            f"{hdrs.ACCEPT_RANGES}: bytes",
            f'{hdrs.ETAG}: "{st.st_mtime_ns:x}-{st.st_size:x}"',
            f"{hdrs.LAST_MODIFIED}: {_http_time(st.st_mtime)}",
            "Date: ",
        ]
        head = "\r\n".join(lines).encode()
        if len(self._heads) >= _HEADS:
            self._heads.clear()
        self._heads[name] = _Head(st.st_mtime_ns, st.st_size, head)
        return head


def _http_time(seconds: float) -> str:
    """``Last-Modified``'s value, as aiohttp's ``StreamResponse.last_modified`` writes it."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(math.ceil(seconds)))


def _read_plain(data: bytes, start: int) -> _Read | None:
    """What the answer depends on, of the plain head at ``data[start]``, if this may answer."""
    head = keep_alive_head(data, start, _ANSWERABLE_BYTES)
    if head is None:
        return None
    offered = head.headers.get(b"x-request-id")
    return head.target, None if offered is None else offered.decode("ascii")


@functools.lru_cache(maxsize=1024)
def _parameters(query: str) -> dict[str, str] | None:
    """The signature's parameters, if the query has only those, none repeated."""
    pairs = parse_qsl(query, keep_blank_values=True)
    parameters = dict(pairs)
    if len(parameters) != len(pairs) or parameters.keys() != _PARAMETERS:
        return None
    return parameters
