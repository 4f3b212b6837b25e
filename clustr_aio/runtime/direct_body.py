"""An upload's body received around aiohttp's parser from its first byte, as the loop read it.

aiohttp parses every byte a connection reads: its parser (llhttp) copies each piece of a body
into a new ``bytes`` for the request's stream, and the body reader
(:mod:`clustr_aio.runtime.body_reader`) can take the connection over only once the route runs,
by when a 500 KB photo has mostly arrived through that copy (bench C0: 31 of 2,581 bodies were
taken, issue 16). So the connection (``GuardedRequestHandler.data_received``) splits a read
that holds the whole head of a ``POST`` to a route that reads its body with
:func:`~clustr_aio.runtime.body_reader.body_chunks` (``POST /api/upload``): the parser gets the
head alone, and the body's bytes come here, never copied: the first read's as a
:class:`~clustr_aio.ingest.multipart.Window` of it after the head, each later read whole (or
the part of it that is the body's, when the next request follows). Once the body's last byte
has arrived (``Content-Length`` of them), the connection gets a new parser for what follows and
the request's stream (``request.content``, empty) its end, as aiohttp would have fed it.

Only a body of known length (no ``Transfer-Encoding``, no ``Content-Encoding``) on a connection
with nothing else queued, not upgraded and not in a crowd is received this way; every other
takes the parser's path, unchanged. The connection's guarantees hold as on that path: the
bytes count for the body timers as they arrive; above :data:`HIGH_WATER` unread bytes the
socket is paused (a pause the guard does not count against the client) until the route has
read down to half of it; a disconnect or the guard's timeout fails the read; and once the
handler is done with the body (or never asked for it: an early 401, 413 or 415), the rest is
read and dropped as it arrives, while aiohttp's lingering read waits for the stream's end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final, Protocol

from clustr_aio.ingest.multipart import Window

__all__ = ["HIGH_WATER", "DirectBody", "DirectTargets"]

HIGH_WATER: Final = 512 * 1024
"""Unread body bytes above which the socket is paused (two of uvloop's largest reads)."""


class DirectTargets:
    """The requests whose bodies a connection receives directly: ``POST``s to these paths
    (with a query or not), told by the first bytes of their head."""

    __slots__ = ("prefixes",)

    def __init__(self, *paths: str) -> None:
        self.prefixes = tuple(
            f"POST {path}{after}".encode("ascii") for path in paths for after in (" ", "?")
        )

    def starts(self, data: bytes) -> bool:
        """Whether ``data``, a request's first bytes, is the head of one of them."""
        return data.startswith(self.prefixes)


class BodyConnection(Protocol):
    """What a direct body needs of its connection."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def direct_body_ended(self, body: DirectBody) -> None: ...


class DirectBody:
    """One request's body, received by its connection around the parser."""

    __slots__ = (
        "_connection",
        "_dropping",
        "_error",
        "_paused",
        "_pieces",
        "_unread",
        "_waiter",
        "payload",
        "remaining",
    )

    def __init__(self, connection: BodyConnection, payload: Any, remaining: int) -> None:
        self._connection = connection
        self.payload = payload
        """The request's body stream (``request.content``), which sees none of the bytes: its
        end is fed once they have all arrived."""
        self.remaining = remaining
        """Body bytes still to come from the socket."""
        self._pieces: deque[bytes | Window] = deque()
        self._unread = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self._dropping = False
        """Set once the handler has let go of the body: the rest is dropped as it arrives."""

    @property
    def released(self) -> bool:
        """Whether the handler is done with it (or a reader has taken the rest)."""
        return self._dropping

    # -- the connection's side ---------------------------------------------------------------

    def received(self, data: bytes, start: int = 0) -> int:
        """``data[start:]`` has been read: the body's part of it is queued (or dropped);
        returns where in ``data`` the body's bytes end (the next request's start, if any)."""
        stop = min(len(data), start + self.remaining)
        size = stop - start
        if size <= 0:
            return start
        self.remaining -= size
        if not self._dropping:
            whole = start == 0 and stop == len(data)
            self._pieces.append(data if whole else Window(data, start, stop))
            self._unread += size
            self._wake()
            if self.remaining and self._unread >= HIGH_WATER and not self._paused:
                self._paused = True
                self._connection.pause_reading()  # as aiohttp's stream does: not the client's
        if not self.remaining:
            self._connection.direct_body_ended(self)
        return stop

    def fail(self, error: BaseException) -> None:
        """The body failed (the guard's timeout, a disconnect): reading raises ``error``."""
        if self._error is None:
            self._error = error
        self._wake()

    def release(self) -> None:
        """The handler is done with the body: what is unread, and what still comes, is dropped."""
        self._dropping = True
        self._pieces.clear()
        self._unread = 0
        self._resume()

    def hand_over(self) -> deque[bytes | Window]:
        """What has arrived and is unread, for a reader that takes the connection's transport
        for the rest (:class:`~clustr_aio.runtime.body_reader.BodyReader`); this body
        receives no more."""
        pieces, self._pieces = self._pieces, deque()
        self._unread = 0
        self.remaining = 0
        self._dropping = True
        self._resume()
        return pieces

    # -- the route's side --------------------------------------------------------------------

    async def read(self) -> bytes | Window:
        """The next bytes of the body, ``b""`` after its last; raises what failed it."""
        while True:
            if self._error is not None:
                raise self._error
            if self._pieces:
                piece = self._pieces.popleft()
                self._unread -= len(piece)
                if self._paused and self._unread < HIGH_WATER // 2:
                    self._resume()
                return piece
            if not self.remaining or self._dropping:
                return b""
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._connection.resume_reading()
