"""Answers a connection gives straight from a parsed request head, before aiohttp makes a
request of it: for the hottest GETs, whose whole answer is a file this process knows (a
cached thumbnail, :mod:`clustr_aio.web.hot_thumbnails`), the routing, the middlewares, the
response object and its hooks cost several times the sending (0.19 ms of Python per GET
against nginx's 0.03 ms for the whole request, measured with wrk on 2 cores).

A :data:`QuickResponder` looks at the head and answers with a :class:`QuickAnswer` (the
response head, ready to send, and the open file of its body) or None, and then the request
goes the ordinary way. It must answer None for anything it would answer differently from the
route: the ordinary path is the reference, and a test compares the two.
:class:`~clustr_aio.runtime.protocol.GuardedRequestHandler` asks it only when no other
request of the connection is waiting or being handled, so answers keep their order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

__all__ = ["QuickAnswer", "QuickResponder", "http_date"]


@dataclass(frozen=True, slots=True)
class QuickAnswer:
    head: bytes
    """Status line and headers, the blank line included."""
    fd: int
    """The body's file, open; the connection closes it once sent."""
    size: int
    """Bytes of the file to send (from its start)."""
    status: int
    request_id: str
    """For the access log."""


class QuickResponder(Protocol):
    def __call__(self, message: Any) -> QuickAnswer | None:
        """Called with aiohttp's parsed request head (a ``RawRequestMessage``: method, path,
        version, headers, should_close …)."""


_date: list[Any] = [0, b""]


def http_date() -> bytes:
    """``Date``'s value for now, made once a second (as aiohttp does)."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    value: bytes = _date[1]
    return value
