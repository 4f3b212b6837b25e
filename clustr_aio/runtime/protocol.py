"""The HTTP connection, hardened against slow, broken and hostile clients.

aiohttp's ``RequestHandler`` (one per connection) gives a hostile client a lot: no time limit on
a request's headers or between body bytes, a keep-alive timeout of an hour that also covers
connections that never send anything, ``text/plain`` parser errors that echo the request's
bytes, a body with a broken chunk that hangs its handler until the client leaves, and a
lingering read that outlives the client. :class:`GuardedRequestHandler` changes exactly that:

- **Head timeout** (``REQUEST_HEADER_TIMEOUT``): from the first byte of a request to the end of
  its headers. Late: a JSON 408, and the connection is closed.
- **Body idle timeout** (``BODY_IDLE_TIMEOUT``): while a handler waits for body bytes, reading
  from the socket (not paused because the handler is behind) and none arriving. Then the body
  stream fails with :class:`~clustr_aio.domain.errors.RequestTimeout`, which the upload turns
  into a JSON 408 after discarding its files (or, if its answer has begun, a closed connection).
- **Minimum body rate** (``MIN_BODY_RATE``): over each ``BODY_IDLE_TIMEOUT`` seconds of waiting
  for a body, at least that many bytes per second must arrive, or the body fails the same way:
  a client trickling a byte a second is cut after one window, not after gigabytes of hours.
  A window in which the server stopped reading (the handler behind) starts again.
- **Send timeout** (``SEND_TIMEOUT``): ``TCP_USER_TIMEOUT`` on every connection, so the kernel
  closes one whose client takes none of the bytes sent for that long (a zero receive window, or
  no acknowledgement). It covers every way a response is written, ``sendfile(2)`` included,
  which no asyncio drain timer sees.
- **Keep-alive** (``KEEPALIVE_TIMEOUT``): aiohttp's own timer, which also starts at connect.
- **Connections** (``MAX_CONNECTIONS``, lowered to fit ``RLIMIT_NOFILE``): at the limit, the
  connection that has been idle the longest (between requests, or still sending its head) is
  closed to make room; if every one is busy with a request, the new one gets a 503 and is closed.
- **Memory per connection**: once more than :data:`CROWD` connections are open, each new one
  reads the socket 16 KiB at a time (not asyncio's 256 KiB: its transport's ``recv`` size;
  uvloop reads whatever the kernel holds, up to 256 KB, so there the socket's receive buffer is
  made that small) and its body stream stops reading the socket above 32 KiB (aiohttp's
  default is 128 KiB): a stalled upload then holds about one read buffer, and many of them do
  not add up to hundreds of MiB (300 stalled uploads on asyncio: a peak of 91-101 MiB, 114-126
  with 32 KiB and 64 KiB, the heap's fragments included). Below that, the defaults.
- **Head size**: a request line and headers of more than :data:`MAX_HEAD_BYTES` (64 KiB) are
  a 431, and the connection is closed; aiohttp alone allows 128 lines of 8190 bytes.
- **Errors as JSON**: every error aiohttp answers itself (the parser's, an unknown ``Expect``,
  an exception that escapes the middlewares) is ``{"detail"}`` with ``X-Request-ID`` and
  ``nosniff``, never the request's bytes, and one INFO log line.
- **Framing** (RFC 9112 §6.1): ``Transfer-Encoding: chunked`` in an HTTP/1.0 request is a 400,
  and the connection closes; a parser error in the middle of a body (a bad chunk size) fails
  that body at once (a 400 from the upload) instead of leaving its handler waiting.

- **Quick answers** (:mod:`clustr_aio.web.quick`): when a request arrives on a connection with
  nothing else waiting or being handled, the server's responders (hot thumbnails, stored
  files) may answer it here in ``data_received``: from the raw bytes while the parser holds
  nothing (the connection is new, or the bytes fed to the parser last ended with a bodiless
  request's head), else from its parsed head. The answer goes out at once (its bytes, or its
  head and file: :func:`~clustr_aio.web.sendfile.send_head_and_file_now`), the handler's task
  is not woken, the keep-alive deadline moves as after any answer, and the access log gets its
  line. What the responder declines, and everything behind it, goes the ordinary way, in order.
- **Trailers**: aiohttp drops a chunked body's trailer fields (and its C parser carries the
  last one into the next request's headers); the connection's
  :class:`~clustr_aio.web.trailers.TrailerReader` reads them from the bytes just before the
  parser does, for the routes that ask (tus's ``checksum-trailer``), and hands the parser the
  bodies without them.

aiohttp has no public hooks for any of it. The private names used, all reached through
:mod:`clustr_aio.compat` (whose tests touch each one), are: of ``RequestHandler`` or its module,
``_ErrInfo`` and the attributes in ``compat.GUARDED_HANDLER_ATTRIBUTES``; of ``Server``, those in
``compat.GUARDED_SERVER_ATTRIBUTES``; of the runner, ``_make_server`` (see :func:`guard_server`);
of asyncio's socket transport, ``max_size``. tests/runtime/test_protocol.py covers each use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import weakref
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from aiohttp import EMPTY_PAYLOAD, HttpVersion10, hdrs, web
from aiohttp.web import BaseRequest, RequestHandler, RequestPayloadError

from clustr_aio.compat import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    ErrInfo,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
    fresh_request_parser,
)
from clustr_aio.domain.errors import RequestTimeout
from clustr_aio.observability.access_log import AccessLogger
from clustr_aio.runtime.memory import TrimAfterLoad
from clustr_aio.web.middlewares import REQUEST_ID_HEADER, ensure_request_id
from clustr_aio.web.quick import QUICK_BACKLOG, QuickAnswer, QuickBacklogs, QuickResponder
from clustr_aio.web.responses import error_response
from clustr_aio.web.sendfile import send_head_and_file_now
from clustr_aio.web.trailers import TrailerReader

if TYPE_CHECKING:
    from clustr_aio.runtime.body_reader import BodyReader

__all__ = [
    "ConnectionGuard",
    "GuardedRequestHandler",
    "GuardedServer",
    "guard_server",
    "limit_accept_error_logs",
]

log = logging.getLogger("clustr_aio")

NO_LIMIT: Final = 10.0**9
"""Seconds standing for "never" where aiohttp wants a number (about 31 years)."""

_LIMIT_LOG_EVERY: Final = 10.0

CROWD: Final = 32
"""Open connections beyond which new ones get small read buffers (bench drives 16)."""
_CROWD_READ_SIZE: Final = 16 * 1024
_CROWD_BUFSIZE: Final = 16 * 1024  # StreamReader's limit: it pauses reading above twice this

_FD_RESERVE_MIN: Final = 64
"""Descriptors kept for what is not a client connection: temporary files, the journal, logs."""
_ACCEPT_BURST: Final = 128
"""Connections asyncio may accept in one go (aiohttp's site backlog) before any of them is
made a connection, and so before the limit can close another to make room: they need
descriptors too, or accept fails with EMFILE and asyncio stops accepting for a second."""
_ACCEPT_BURSTS: Final = 3
"""How many such bursts can come before the first closes land: an accepted socket becomes a
connection two loop iterations later, and a connection closed to make room releases its
descriptor one iteration after that (measured: with one burst reserved, a 512-descriptor
limit still hit EMFILE under 1,000 new connections, and a normal client waited 1 to 5 s)."""

# The detail of each parser error, by exception class: what was wrong, never the bytes.
_PARSER_DETAILS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (LineTooLong, "a request line or header field is too long"),
    (BadHttpMethod, "malformed request method"),
    (BadStatusLine, "malformed request line"),
    (InvalidHeader, "malformed header field"),
    (TransferEncodingError, "malformed chunked transfer-coding"),
    (ContentLengthError, "malformed or conflicting Content-Length"),
)
_STATUS_DETAILS: Final = {
    400: "malformed HTTP request",
    408: "the request took too long to arrive",
    417: "unsupported Expect header: only 100-continue is supported",
    500: "Internal Server Error",
    504: "Gateway Timeout",
}
_HEAD_TIMEOUT: Final = "the request's headers did not arrive in time"
MAX_HEAD_BYTES: Final = 64 * 1024
"""The most a request line and headers may take together; more is a 431."""
_HEAD_TOO_LARGE: Final = f"the request's headers are larger than {MAX_HEAD_BYTES} bytes"
_CHUNKED_HTTP10: Final = "Transfer-Encoding: chunked is not allowed in an HTTP/1.0 request"
_TOO_MANY_CONNECTIONS: Final = b"the server has too many connections open; retry shortly"

# Phases of a connection, for the timers.
_IDLE: Final = 0  # waiting for a request: aiohttp's keep-alive timer
_HEAD: Final = 1  # a request's head is arriving: the head timeout
_BODY: Final = 2  # a request is being handled: the body idle timeout


@dataclass(slots=True)
class ConnectionGuard:
    """The limits of one server's connections (one per process)."""

    header_timeout: float
    body_idle_timeout: float
    max_connections: int
    min_body_rate: float = 0.0
    """Bytes per second a body must average over each ``body_idle_timeout``; 0: no minimum."""
    send_timeout: float = 0.0
    """Seconds sent bytes may stay unacknowledged before the kernel closes; 0: its default."""
    open: int = 0
    evicted: int = 0
    refused: int = 0
    logged_at: float = float("-inf")
    """When the limit was last reported in the log (once per 10 s at most)."""
    idle: dict[GuardedRequestHandler, None] = field(default_factory=dict)
    """The connections that may be closed to make room (idle, or sending a head), the one
    active longest ago first: a dict keeps insertion order, and activity re-inserts."""

    def active(self, connection: GuardedRequestHandler, *, evictable: bool) -> None:
        self.idle.pop(connection, None)
        if evictable:
            self.idle[connection] = None

    @classmethod
    def fitted(
        cls,
        *,
        header_timeout: float,
        body_idle_timeout: float,
        max_connections: int,
        min_body_rate: float = 0.0,
        send_timeout: float = 0.0,
    ) -> ConnectionGuard:
        """With ``max_connections`` lowered to leave descriptors under the soft
        ``RLIMIT_NOFILE`` for files (an eighth of it, at least 64) and for bursts of accepts."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            room = soft - max(_FD_RESERVE_MIN, soft // 8) - _ACCEPT_BURSTS * _ACCEPT_BURST
            max_connections = max(1, min(max_connections, room))
        return cls(header_timeout, body_idle_timeout, max_connections, min_body_rate, send_timeout)


class GuardedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory) making :class:`GuardedRequestHandler`
    connections and keeping them under the guard's limit."""

    guard: ConnectionGuard
    trim: TrimAfterLoad
    quick: QuickResponder | None
    """Answers the hottest GETs from their head (see :mod:`clustr_aio.web.quick`); None while
    draining, or when the application has none."""
    served: weakref.WeakSet[asyncio.BaseTransport] | None
    """Where a connection that got a quick answer is noted, as the drain's ``used``."""
    backlogs: QuickBacklogs
    """What quick answers left unsent, in all connections: above a bound, none are given."""

    def __call__(self) -> RequestHandler:
        if self.guard.open >= CROWD:
            return GuardedRequestHandler(
                self, loop=self._loop, **(self._kwargs | {"read_bufsize": _CROWD_BUFSIZE})
            )
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        guard = self.guard
        guard.open += 1
        if isinstance(handler, GuardedRequestHandler):
            guard.active(handler, evictable=True)
        self.trim.opened(guard.open)
        if guard.send_timeout:
            _set_user_timeout(transport, guard.send_timeout)
        if guard.open > CROWD:
            if hasattr(transport, "max_size"):  # asyncio's transport: its recv() size
                transport.max_size = _CROWD_READ_SIZE
            else:  # uvloop's: each read takes what the kernel holds
                _set_receive_buffer(transport, _CROWD_READ_SIZE)
        if guard.open > guard.max_connections:
            self._make_room(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._connections:
            self.guard.open -= 1
            self.guard.idle.pop(handler, None)  # type: ignore[call-overload]
            self.trim.closed(self.guard.open)
        super().connection_lost(handler, exc)

    def _make_room(self, newcomer: RequestHandler, transport: asyncio.Transport) -> None:
        """Close the connection idle the longest; if all are busy, turn the newcomer away."""
        guard = self.guard
        victim: GuardedRequestHandler | None = None
        for connection in guard.idle:  # oldest first; the newcomer is last
            if connection is not newcomer and connection.evictable:
                victim = connection
                break
        if victim is not None:
            guard.idle.pop(victim)
            guard.evicted += 1
            victim.force_close()
        else:
            guard.refused += 1
            transport.write(_canned_503())
            newcomer.force_close()
        now = self._loop.time()
        if now - guard.logged_at >= _LIMIT_LOG_EVERY:
            guard.logged_at = now
            log.warning(
                "at the connection limit (%d): %d idle connection(s) closed to make room, %d "
                "new one(s) refused with 503, since start",
                guard.max_connections,
                guard.evicted,
                guard.refused,
            )


def _set_user_timeout(transport: asyncio.Transport, seconds: float) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket (a test's, or a proxy's) has no such timeout
    with contextlib.suppress(OSError):  # closed already: connection_lost follows
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))


def _set_receive_buffer(transport: asyncio.Transport, size: int) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):  # closed already: connection_lost follows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _canned_503() -> bytes:
    body = b'{"detail": "' + _TOO_MANY_CONNECTIONS + b'"}'
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nRetry-After: 1\r\nX-Content-Type-Options: nosniff\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )


def guard_server(
    server: web.Server,
    guard: ConnectionGuard,
    *,
    quick: QuickResponder | None = None,
    served: weakref.WeakSet[asyncio.BaseTransport] | None = None,
) -> GuardedServer:
    """Make the runner's ``Server`` a :class:`GuardedServer`. aiohttp builds it inside the
    runner's private ``_make_server`` from the app's private handler; swapping the class of
    the finished object touches neither, and adds only methods and attributes."""
    server.__class__ = GuardedServer
    assert isinstance(server, GuardedServer)
    server.guard = guard
    server.trim = TrimAfterLoad(asyncio.get_running_loop())
    server.quick = quick
    server.served = served
    server.backlogs = QuickBacklogs()
    return server


class GuardedRequestHandler(RequestHandler):
    """See the module documentation."""

    __slots__ = (
        "_deadline",
        "_guard",
        "_head_bytes",
        "_lingering_payload",
        "_options",
        "_phase",
        "_plain",
        "_server",
        "_timer",
        "_window_bytes",
        "_window_start",
        "body_taker",
        "last_active",
        "trailer_reader",
    )

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._options = kwargs
        self.body_taker: BodyReader | None = None
        """The reader that has this connection's transport while a body arrives, if any
        (:mod:`clustr_aio.runtime.body_reader`)."""
        self._server = manager
        self._guard = manager.guard
        self._phase = _IDLE
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._lingering_payload: Any = None
        self.last_active = self._loop.time()
        self._window_start = self.last_active  # the minimum body rate's current window
        self._window_bytes = 0
        self._plain = True
        """Whether the parser holds nothing of a request (see :meth:`_answer_plain`)."""
        self.trailer_reader = TrailerReader()

    @property
    def evictable(self) -> bool:
        """Whether closing it loses no request (idle, or still sending a request's head), and
        it is not closing already (its descriptor is released a loop iteration later)."""
        return (
            self._phase != _BODY
            and not self._messages
            and not self._force_close
            and self.transport is not None
        )

    # -- input -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        now = self._loop.time()
        self.last_active = now
        if self._plain and self._phase == _IDLE and data:
            # What is answered here reaches neither the parser nor the trailer reader: whole
            # bodiless requests, where both stand between two requests, as if never sent.
            answered = self._answer_plain(data, now)
            if answered:
                self._guard.active(self, evictable=self.evictable)
                if answered == len(data):
                    return
                data = data[answered:]
        if self._phase == _IDLE and data:
            self._phase = _HEAD
            self._head_bytes = 0
            self._arm(now + self._guard.header_timeout)
        if self._phase == _HEAD:
            self._head_bytes += len(data)
        else:
            self._window_bytes += len(data)
        count = self._request_count
        quick = self._server.quick
        waiter = self._waiter
        # Nothing of this connection waiting or being handled: the handler's task waits for
        # the next request, and need not be woken for one answered here.
        held = quick is not None and waiter is not None and not waiter.done()
        held = held and not self._messages
        if held:
            self._waiter = None
        try:
            trailers, messages = self.trailer_reader, self._messages
            before = len(messages)
            super().data_received(trailers.to_parse(data))
            trailers.pair_parsed(messages, before)
        finally:
            if held:
                self._waiter = waiter
        if data:
            self._plain = self._request_count != count and self._ends_a_bodiless_head(data)
        if self._request_count != count:
            self._check_new_messages(self._request_count - count)
            if held:
                assert quick is not None
                assert waiter is not None
                self._answer_quickly(quick, now)
                if self._messages and not waiter.done():
                    waiter.set_result(None)  # what is left is the handler's
                elif not self._messages:
                    self._phase = _IDLE
            if self._phase == _HEAD:
                self._phase = _BODY
                self._new_window(now)
                self._arm(now + self._guard.body_idle_timeout)
        elif self._phase == _HEAD and self._head_bytes > MAX_HEAD_BYTES:
            # aiohttp bounds each header line (8190 bytes) and their number (128): a head of
            # 1 MB, held by the parser while it waits for the rest (200 of them: 437 MiB).
            self._queue_error(431, BadHttpMessage(_HEAD_TOO_LARGE))
        self._guard.active(self, evictable=self.evictable)

    def _ends_a_bodiless_head(self, data: bytes) -> bool:
        """After ``data`` went to the parser and made messages: whether the parser holds
        nothing now. It does not if the last message has a body (being read) or is an error;
        if it paused with a full queue (it keeps the rest); if the connection is upgraded; and
        if anything follows the last head, which could only be the start of the next one,
        since no complete head comes after the last message's: then ``data`` does not end
        with that head's blank line."""
        if self._upgraded or not self._messages:
            return False
        if len(self._messages) >= self._max_msg_queue_size:
            return False
        message, payload = self._messages[-1]
        return (
            payload is EMPTY_PAYLOAD
            and not isinstance(message, ErrInfo)
            and data.endswith(b"\r\n\r\n")
        )

    def _answer_plain(self, data: bytes, started: float) -> int:
        """Answer the requests at the start of ``data`` that the responder can from their raw
        heads, while the parser holds nothing and no request of the connection waits or is
        being handled; how many bytes of ``data`` their heads took (the rest is the parser's)."""
        quick = self._server.quick
        waiter = self._waiter
        transport = self.transport
        if quick is None or self._messages:
            return 0
        # The handler's task waits for a request; or, on a new connection, it has not run
        # yet (uvloop reads what came with the connection before it does).
        if (waiter is None or waiter.done()) and (waiter is not None or self._request_count):
            return 0
        answered = 0
        while (
            answered < len(data)
            and not self._force_close
            and transport is not None
            and transport.get_write_buffer_size() <= QUICK_BACKLOG
            and not self._server.backlogs.full()
        ):
            try:
                answer = quick.answer_plain(data, answered)
            except Exception:  # a bug of the responder's must not cost the connection
                log.exception("the quick responder failed; the route answers")
                break
            if answer is None:
                break
            answered = answer.end
            self._request_count += 1
            self._send_quick(transport, answer, started)
        return answered

    def _answer_quickly(self, quick: QuickResponder, started: float) -> None:
        """Answer the queued requests ``quick`` can, from the first, while it can."""
        while self._messages and not self._force_close:
            message, payload = self._messages[0]
            transport = self.transport
            if isinstance(message, ErrInfo) or payload is not EMPTY_PAYLOAD or transport is None:
                return
            if transport.get_write_buffer_size() > QUICK_BACKLOG or self._server.backlogs.full():
                return
            try:
                answer = quick(message)
            except Exception:  # a bug of the responder's must not cost the connection
                log.exception("the quick responder failed; the route answers")
                return
            if answer is None:
                return
            self._messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            self._send_quick(transport, answer, started)

    def _send_quick(
        self, transport: asyncio.Transport, answer: QuickAnswer, started: float
    ) -> None:
        self._server.requests_count += 1
        try:
            if answer.fd is None:
                transport.write(answer.data)
            else:
                send_head_and_file_now(transport, answer.data, answer.fd, answer.size)
        except OSError:  # the client has gone (or the file shrank: nothing sane to send)
            self.force_close()
            return
        finally:
            if answer.fd is not None:
                os.close(answer.fd)
        self._server.backlogs.note(transport)
        if self._server.served is not None:
            self._server.served.add(transport)
        now = self._loop.time()
        # As aiohttp does after each response: the keep-alive time starts again.
        self._next_keepalive_close_time = now + self._keepalive_timeout
        self.last_active = now
        logger = self.access_logger
        if logger is not None and logger.enabled and isinstance(logger, AccessLogger):
            logger.log_line(
                _peer(transport),
                answer.method,
                answer.target,
                answer.status,
                answer.size,
                now - started,
                answer.request_id,
            )

    def _check_new_messages(self, new: int) -> None:
        queued = list(self._messages)
        first_new = len(queued) - new
        for at in range(first_new, len(queued)):
            message = queued[at][0]
            if isinstance(message, ErrInfo):
                if self._fail_unfinished_bodies(queued[:first_new], message.exc):
                    # A parse error inside a body being received: that body fails now (its
                    # handler answers 400), and the connection ends after the answers.
                    self._truncate_queue(queued, at)
                    self._close = True
                return
            if message.version == HttpVersion10 and message.chunked:
                self._truncate_queue(queued, at)
                self._queue_error(400, BadHttpMessage(_CHUNKED_HTTP10))
                return

    def _truncate_queue(self, queued: list[Any], at: int) -> None:
        self._messages.clear()
        self._messages.extend(queued[:at])

    def _fail_unfinished_bodies(self, queued: list[Any], exc: BaseException) -> bool:
        request = self._current_request
        payloads = [request.content] if request is not None else []
        payloads += [payload for _, payload in queued]
        failed = False
        for payload in payloads:
            if not payload.is_eof() and payload.exception() is None:
                self._fail_body(payload, RequestPayloadError(_parser_detail(exc)))
                failed = True
        return failed

    def _queue_error(self, status: int, error: BaseException) -> None:
        """Answer ``status`` (see :meth:`handle_error`) after what is queued, read no more."""
        self._messages.append((ErrInfo(status=status, exc=error, message=""), EMPTY_PAYLOAD))
        self._close = True  # data_received ignores what comes next
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        # The body stream calls this after every read; only a real resume matters: the
        # handler caught up, the client had been held back, so its rate starts afresh.
        paused = self._reading_paused
        super().resume_reading(*args, **kwargs)
        if paused:
            self._new_window(self._loop.time())

    def _new_window(self, now: float) -> None:
        self._window_start = now
        self._window_bytes = 0

    def _fail_body(self, payload: Any, error: BaseException) -> None:
        payload.set_exception(error)
        if self.body_taker is not None:
            self.body_taker.fail(error)
        self._lingering_time = 0.0  # nothing more to read of it: close after the answer

    # -- a body read around the parser (runtime/body_reader.py) -------------------------------

    def may_take_body(self) -> bool:
        """Whether the request being handled may have the rest of its body read by a
        :class:`~clustr_aio.runtime.body_reader.BodyReader`: nothing else queued or arriving,
        not closing, no crowd (whose small reads bound memory)."""
        return (
            self.body_taker is None
            and self._phase == _BODY
            and not self._messages
            and not self._upgraded
            and not self._force_close
            and not self._close
            and self._guard.open <= CROWD
        )

    def body_bytes_arrived(self, size: int) -> None:
        """What :meth:`data_received` notes of body bytes: the body timers, the framing the
        trailer reader follows."""
        self.last_active = self._loop.time()
        self._window_bytes += size
        self.trailer_reader.skipped(size)

    def reset_parser(self) -> None:
        """A new parser, as the connection's first: the body the old one was in the middle of
        has been read around it, and what follows is the next request."""
        self._parser = fresh_request_parser(self, self._options)

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            # The head's timer, when the body's deadline comes first (a head timeout longer
            # than the body's): a timer that fires late would delay the body's check.
            timer.cancel()
            self._timer = timer = None
        if timer is None and deadline < NO_LIMIT:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if self._phase == _HEAD:
            if now < self._deadline:
                self._arm(self._deadline)
            else:
                log.info(
                    "request head not received within %gs; closing", self._guard.header_timeout
                )
                self._queue_error(408, RequestTimeout(_HEAD_TIMEOUT))
            return
        if self._phase != _BODY:
            return
        request = self._current_request
        payload = request.content if request is not None else None
        if payload is None or payload.is_eof() or payload.exception() is not None:
            if request is None and self._messages:  # the next request waits: check again later
                self._arm(now + self._guard.body_idle_timeout)
            return
        timeout = self._guard.body_idle_timeout
        if self._reading_paused:  # the handler is behind, not the client
            self.last_active = now
            self._new_window(now)
        window_over = now >= self._window_start + timeout
        if now >= self.last_active + timeout or (window_over and not self._window_bytes):
            log.info("no body bytes for %gs; failing the request", timeout)
            self._fail_body(payload, RequestTimeout(f"no body bytes received for {timeout:g} s"))
            return
        if window_over:
            rate = self._window_bytes / (now - self._window_start)
            if rate < self._guard.min_body_rate:
                minimum = self._guard.min_body_rate
                log.info(
                    "body arriving at %.0f bytes/s over %gs, under MIN_BODY_RATE (%g); failing "
                    "the request",
                    rate,
                    timeout,
                    minimum,
                )
                detail = f"the body arrived at {rate:.0f} bytes/s, slower than {minimum:g} bytes/s"
                self._fail_body(payload, RequestTimeout(detail))
                return
            self._new_window(now)
        self._arm(min(self.last_active, self._window_start) + timeout)

    # -- output ------------------------------------------------------------------------------

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and not resp.prepared:
            # Raised where no middleware sees it (an unknown Expect, say): JSON too.
            resp = self._json_error(request, resp.status, resp.headers)
        if self._lingering_time == 0.0 or self._close:
            resp.force_close()
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._phase = _BODY if self._messages else _IDLE
            self.last_active = self._loop.time()
            self._guard.active(self, evictable=self.evictable)
            if self._phase == _BODY:
                self._new_window(self.last_active)
                self._arm(self.last_active + self._guard.body_idle_timeout)
            if not request.content.is_eof():
                self._lingering_payload = request.content

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or handle, as JSON, one log line
        (debug for a first request that is not HTTP at all: scanners, TLS on the plain port)."""
        detail = _parser_detail(exc) if status in (400, 431) else _STATUS_DETAILS.get(status)
        if status >= 500:
            log.error("error handling %s %s", request.method, request.path, exc_info=exc)
        elif self._request_count == 1 and isinstance(exc, BadHttpMethod):
            log.debug("not an HTTP request from %s", request.remote)
        else:
            log.info("bad request from %s: %d, %s", request.remote, status, _reason_of(exc, detail))
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun: no error response can follow")
        response = self._json_error(request, status, {}, detail)
        response.force_close()
        return response

    def _json_error(
        self, request: BaseRequest, status: int, headers: Any, detail: str | None = None
    ) -> web.Response:
        kept: dict[str, str] = {
            str(k): v for k in (hdrs.ALLOW, hdrs.RETRY_AFTER) if (v := headers.get(k)) is not None
        }
        detail = detail or _STATUS_DETAILS.get(status) or _reason(status)
        response = error_response(status, detail, headers=kept)
        # What the app's on_response_prepare adds; it does not run for an unparsed request.
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers[REQUEST_ID_HEADER] = ensure_request_id(request)
        return response

    # -- end ---------------------------------------------------------------------------------

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # aiohttp's lingering read of an unread body would wait its whole lingering time for
        # bytes from a client that has gone.
        payload, self._lingering_payload = self._lingering_payload, None
        if payload is not None and not payload.is_eof():
            payload.feed_eof()
        super().connection_lost(exc)


def _peer(transport: asyncio.Transport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, (list, tuple)) and peer else "-"


def _parser_detail(exc: BaseException | None) -> str:
    for kind, detail in _PARSER_DETAILS:
        if isinstance(exc, kind):
            return detail
    if isinstance(exc, BadHttpMessage) and exc.message in (_CHUNKED_HTTP10, _HEAD_TOO_LARGE):
        return exc.message
    if isinstance(exc, HttpProcessingError) and "header" in exc.message.lower():
        return "malformed or too many header fields"
    return _STATUS_DETAILS[400]


def _reason_of(exc: BaseException | None, detail: str | None) -> str:
    """For the log: the parser's own reason (the first line of its message: the lines after
    it quote the request), else the detail."""
    if isinstance(exc, HttpProcessingError) and exc.message:
        return " ".join(exc.message.splitlines()[0].split())[:200]
    return detail or ""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_ACCEPT_ERROR: Final = "socket.accept() out of system resource"
_ACCEPT_LOG_EVERY: Final = 10.0


def limit_accept_error_logs(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs every failed ``accept`` (EMFILE at the descriptor limit) with a traceback:
    thousands a second under a flood. Make it one WARNING line per 10 s, with a count; every
    other error goes to the handler that was there."""
    previous = loop.get_exception_handler()
    last = [-_ACCEPT_LOG_EVERY, 0]  # when the last line was logged; errors since

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_ERROR:
            if previous is None:
                loop.default_exception_handler(context)
            else:
                previous(loop, context)
            return
        last[1] += 1
        now = loop.time()
        if now - last[0] >= _ACCEPT_LOG_EVERY:
            log.warning(
                "cannot accept connections: %s (%d time(s) in the last %gs; asyncio retries "
                "after a second)",
                context.get("exception"),
                last[1],
                _ACCEPT_LOG_EVERY,
            )
            last[0], last[1] = now, 0

    loop.set_exception_handler(handler)
