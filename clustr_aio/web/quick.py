"""Answers a connection gives straight from a parsed request head, before aiohttp makes a
request of it: for the hottest GETs, whose whole answer is a file this process knows (a
cached thumbnail, :mod:`clustr_aio.web.hot_thumbnails`; a stored file,
:mod:`clustr_aio.web.hot_files`), the routing, the middlewares, the
response object and its hooks cost several times the sending (0.19 ms of Python per GET
against nginx's 0.03 ms for the whole request, measured with wrk on 2 cores).

A :data:`QuickResponder` looks at the head and answers with a :class:`QuickAnswer` (the
response, ready to send: its head and, when it keeps them in memory, the body's bytes; else
the open file of its body) or None, and then the request goes the ordinary way. It must answer
None for anything it would answer differently from the route: the ordinary path is the
reference, and a test compares the two. It is asked in one of two ways:

- with the raw bytes, before aiohttp's parser sees them (:meth:`QuickResponder.answer_plain`,
  which reads a head with :func:`~clustr_aio.web.plain_head.plain_head`), when the connection's
  parser holds nothing: the parser's message objects cost more than the whole answer;
- with aiohttp's parsed head, when the bytes had to go to the parser (the connection's first
  request came before its handler waited, or the previous bytes ended inside a request).

:class:`~clustr_aio.runtime.protocol.GuardedRequestHandler` asks it only when no other request
of the connection is waiting or being handled, so answers keep their order, and only while
the transport holds little unsent (:data:`QUICK_BACKLOG`), so that a client pipelining
requests without reading their answers meets the ordinary path's flow control, and while all
the process's transports together hold less than :data:`QUICK_BACKLOG_TOTAL` of quick answers
(:class:`QuickBacklogs`), so that many slow clients do too.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from aiohttp import HttpVersion11

__all__ = [
    "QUICK_BACKLOG",
    "QUICK_BACKLOG_TOTAL",
    "QuickAnswer",
    "QuickBacklogs",
    "QuickResponder",
    "QuickResponders",
    "http_date",
    "plain_message",
]

QUICK_BACKLOG: Final = 64 * 1024
"""Unsent bytes in the transport above which no more requests are answered quickly: the rest
go to aiohttp's handler, whose writes wait for the client."""
QUICK_BACKLOG_TOTAL: Final = 4 * 1024 * 1024
"""Unsent bytes quick answers left in all of a process's transports above which none are
answered quickly: a file the socket does not take at once is read into its transport's buffer
(:func:`~clustr_aio.web.sendfile.send_head_and_file_now`), and many slow clients would
otherwise hold a photo each in memory; the route's answers wait for them instead."""


class QuickAnswer(NamedTuple):
    data: bytes
    """Status line and headers, the blank line included; with ``fd`` None, the body too."""
    fd: int | None
    """The body's file, open (the connection closes it once sent); None: it is in ``data``."""
    size: int
    """Bytes of the body (of the file: from its start)."""
    status: int
    request_id: str
    """For the access log, with the method and target."""
    method: str
    target: str
    end: int = 0
    """After :meth:`QuickResponder.answer_plain`: where the request's head ended."""


class QuickResponder(Protocol):
    def __call__(self, message: Any) -> QuickAnswer | None:
        """Called with aiohttp's parsed request head (a ``RawRequestMessage``: method, path,
        version, headers, should_close …)."""

    def answer_plain(self, data: bytes, start: int) -> QuickAnswer | None:
        """Called with a connection's raw bytes when its parser holds nothing: the answer to
        the request whose head starts at ``data[start]`` (complete, of the plainest shape:
        :func:`~clustr_aio.web.plain_head.plain_head`), ``end`` saying where it ended."""


class QuickBacklogs:
    """The transports quick answers left bytes unsent in, while they hold any."""

    __slots__ = ("_transports",)

    def __init__(self) -> None:
        self._transports: weakref.WeakSet[asyncio.WriteTransport] = weakref.WeakSet()

    def note(self, transport: asyncio.WriteTransport) -> None:
        """After a quick answer was written to ``transport``."""
        if transport.get_write_buffer_size():
            self._transports.add(transport)

    def unsent(self) -> int:
        """Bytes those transports hold now (those that hold none are forgotten)."""
        total = 0
        for transport in list(self._transports):
            size = transport.get_write_buffer_size()
            if not size:
                self._transports.discard(transport)
            total += size
        return total

    def full(self) -> bool:
        """Whether they hold more than :data:`QUICK_BACKLOG_TOTAL` (cheap while none do)."""
        return bool(self._transports) and self.unsent() > QUICK_BACKLOG_TOTAL


_R = TypeVar("_R")


class QuickResponders:
    """Several responders as one, each asked only for the targets under its path prefix (the
    first whose prefix matches answers or declines)."""

    __slots__ = ("_plain", "_responders")

    def __init__(self, responders: Sequence[tuple[str, QuickResponder]]) -> None:
        self._responders = tuple(responders)
        self._plain = tuple((b"GET " + p.encode(), r) for p, r in self._responders)

    def of(self, kind: type[_R]) -> _R | None:
        """The responder of that class, if it is one of these."""
        for _prefix, responder in self._responders:
            if isinstance(responder, kind):
                return responder
        return None

    def __call__(self, message: Any) -> QuickAnswer | None:
        path: str = message.path
        for prefix, responder in self._responders:
            if path.startswith(prefix):
                return responder(message)
        return None

    def answer_plain(self, data: bytes, start: int) -> QuickAnswer | None:
        for prefix, responder in self._plain:
            if data.startswith(prefix, start):
                return responder.answer_plain(data, start)
        return None


def plain_message(message: Any, names: frozenset[str]) -> bool:
    """Whether aiohttp's parsed head ``message`` is a ``GET`` over HTTP/1.1 that leaves its
    connection open, with only headers whose lower-case names are in ``names``."""
    if message.method != "GET" or message.version != HttpVersion11 or message.should_close:
        return False
    return all(name.lower() in names for name in message.headers)


_date: list[Any] = [0, b""]


def http_date() -> bytes:
    """``Date``'s value for now, made once a second (as aiohttp does)."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    value: bytes = _date[1]
    return value
