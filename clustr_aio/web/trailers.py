"""The trailer fields of chunked request bodies, read from the connection's raw bytes.

aiohttp (3.14) parses a chunked body's trailer section and drops it: its C parser (llhttp)
reports the fields through the header callbacks into ``cdef`` lists Python cannot reach, and its
pure-Python parser keeps them in a local variable (aio-libs/aiohttp#1652). tus's
``checksum-trailer`` needs them: the ``Upload-Checksum`` of a chunk that a client hashed while
sending it. So a :class:`TrailerReader` reads each connection's bytes beside the parser, just
before the parser gets them (``GuardedRequestHandler.data_received``), and keeps the trailer
section of every chunked body whose head announced one (a ``Trailer`` field).

To know where a body starts it must know where the message before it ended, so it follows the
framing of every message: a head to its blank line (of which it reads the method and the fields
that frame the body: ``Content-Length``, ``Transfer-Encoding``, ``Trailer``, ``Upgrade``), a body
of known length skipped by its length, a chunked one by its size lines, each chunk's data
skipped by its size. Body bytes are never copied or looked at; only a head, a size line or a
trailer line is, a few KiB at most. It is strict and never guesses: on anything it does not
expect (a size line that is not hex digits and extensions ending in CRLF, a chunk not followed
by CRLF, a malformed trailer line, more than :data:`MAX_TRAILER_SECTION` of trailers, an
upgrade, ``CONNECT``) it stops following the connection (:attr:`TrailerReader.lost`), and the
trailers it has not read are unreadable: a tus ``PATCH`` that announced one gets a 400.

The parser keeps it honest: each request aiohttp parses is paired, in order, with the head read
here, and a request aiohttp refused, or one whose method or framing differs, stops it too. As
bytes reach it before the parser, a body's trailer section is read before the parser feeds that
body's end: a handler that has read its body to the end finds its trailers here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Protocol, runtime_checkable

from aiohttp import web

from clustr_aio.compat import ErrInfo

__all__ = [
    "MAX_TRAILER_SECTION",
    "BodyTrailers",
    "TrailerReader",
    "body_trailers",
    "reads_trailers",
]

MAX_TRAILER_SECTION: Final = 16 * 1024
"""The most a body's trailer section may take (its fields are a checksum or a signature)."""
_MAX_HEAD: Final = 64 * 1024 + 4
"""A longer head is refused (431) by the connection anyway."""
_MAX_SIZE_LINE: Final = 4 * 1024
"""A chunk-size line with its extensions."""
_MAX_AHEAD: Final = 4096
"""Heads read here but not yet parsed by aiohttp (which pauses between messages once 32 wait)."""
_KEPT: Final = 64
"""Announced trailers kept for requests that have not taken theirs: aiohttp queues at most 32
parsed requests per connection beside the one being handled, so an older one has ended."""
_CRLF: Final = b"\r\n"
_HEX: Final = b"0123456789abcdefABCDEF"

# What the reader is in the middle of.
_HEAD: Final = 0  # a request's head, up to its blank line
_FIXED: Final = 1  # a body of Content-Length bytes
_SIZE: Final = 2  # a chunk-size line
_DATA: Final = 3  # a chunk's data
_DATA_END: Final = 4  # the CRLF after a chunk's data
_TRAILER: Final = 5  # a line of the trailer section
_LOST: Final = 6  # no longer following


@dataclass(slots=True)
class BodyTrailers:
    """The trailer section of one chunked request body."""

    fields: dict[str, str] | None = None
    """Lower-case names to values (a repeated field's values joined by ", "), once the section
    has arrived whole; None before, and for good once :attr:`lost`."""
    lost: bool = False
    """The connection stopped following its framing before the section was read."""


@dataclass(slots=True)
class _Head:
    method: str
    chunked: bool
    length: int
    trailers: BodyTrailers | None
    """For a chunked body whose head announced trailers; None for every other message."""


class TrailerReader:
    """One connection's framing, followed for the trailer sections of its chunked bodies."""

    __slots__ = ("_ahead", "_buffer", "_current", "_fields", "_kept", "_remaining", "_state")

    def __init__(self) -> None:
        self._state = _HEAD
        self._buffer = bytearray()
        """The head, size line or trailer line read so far, when it spans reads."""
        self._remaining = 0
        """Bytes of the body, the chunk's data or the CRLF after it still to skip; in the
        trailer section, its bytes read so far."""
        self._ahead: deque[_Head] = deque()
        """Heads read here that aiohttp's parser has not made requests of yet."""
        self._kept: deque[tuple[object, BodyTrailers]] = deque(maxlen=_KEPT)
        """Announced trailers by the body stream (``request.content``) of their request."""
        self._current: BodyTrailers | None = None
        self._fields: dict[str, str] = {}

    @property
    def lost(self) -> bool:
        return self._state == _LOST

    # Around aiohttp's parsing of each read, two plain calls rather than a context manager:
    # the connection makes them for every read of every body (a generator's context manager
    # was a tenth of their Python calls per small upload, issue 16).

    def to_parse(self, data: bytes) -> bytes:
        """Before aiohttp's parser gets ``data``: read it first, and give what the parser is
        to parse (``data`` without its trailer fields, see :meth:`feed`). Then
        :meth:`pair_parsed`."""
        return data if self._state == _LOST else self.feed(data)

    def pair_parsed(self, queue: Sequence[tuple[Any, Any]], before: int) -> None:
        """After the parser: pair what it appended to ``queue`` (the connection's parsed
        requests, of which ``before`` were there before it parsed) with the heads read."""
        if len(queue) > before and self._state != _LOST:
            self._pair(islice(queue, before, None))

    def skipped(self, size: int) -> None:
        """``size`` bytes of a body of known length went around the parser, and here
        (``runtime/body_reader.py`` reads large upload bodies itself): followed as if read."""
        if self._state == _FIXED and size <= self._remaining:
            self._remaining -= size
            if not self._remaining:
                self._state = _HEAD
        elif self._state != _LOST:
            self._lose()

    def take(self, body: object) -> BodyTrailers | None:
        """The trailers announced for the request whose body stream is ``body`` (once)."""
        for at, (kept_body, trailers) in enumerate(self._kept):
            if kept_body is body:
                del self._kept[at]
                return trailers
        return None

    # -- the bytes ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Follow ``data``; what the parser is to parse: ``data`` without the trailer fields
        (they are read here). aiohttp 3.14.5's C parser carries the last trailer field of a
        body into the next request's headers on the connection (it is still pending when the
        message ends, and the next message's first field flushes it), where a client's
        trailer would become a header of its next request, or make it a 400 (a second
        ``Host``); so the parser gets each body's last chunk with an empty trailer section.
        Only a read that holds trailer fields is copied."""
        drops: list[tuple[int, int]] = []
        self._follow(data, drops)
        if not drops:
            return data
        kept, at = [], 0
        for start, stop in drops:
            kept.append(data[at:start])
            at = stop
        kept.append(data[at:])
        return b"".join(kept)

    def _follow(self, data: bytes, drops: list[tuple[int, int]]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state in (_FIXED, _DATA):
                step = min(self._remaining, end - pos)
                pos += step
                self._remaining -= step
                if not self._remaining:
                    if state == _FIXED:
                        self._state = _HEAD
                    else:
                        self._state, self._remaining = _DATA_END, 2
            elif state == _DATA_END:
                if data[pos] != _CRLF[2 - self._remaining]:
                    self._lose()
                    return
                pos += 1
                self._remaining -= 1
                if not self._remaining:
                    self._state = _SIZE
            elif state == _HEAD:
                pos = self._read_head(data, pos)
            elif state == _SIZE:
                line, pos = self._take_until(data, pos, _CRLF, _MAX_SIZE_LINE)
                if line is not None:
                    self._size_line(line[:-2])
            elif state == _TRAILER:
                start = pos
                first = self._buffer[0] if self._buffer else data[pos]
                line, pos = self._take_until(data, pos, _CRLF, MAX_TRAILER_SECTION)
                if first != _CRLF[0]:  # a field line, not the blank line that ends them all
                    drops.append((start, pos))
                if line is not None:
                    self._remaining += len(line)  # the section's size so far
                    if self._remaining > MAX_TRAILER_SECTION:
                        self._lose()
                        return
                    self._trailer_line(line[:-2])
            else:
                return

    def _take_until(
        self, data: bytes, pos: int, terminator: bytes, limit: int
    ) -> tuple[bytes | None, int]:
        """What is buffered and ``data[pos:]`` up to and with ``terminator``, and where in
        ``data`` it ends; (None, len(data)) while it has not arrived (``data`` buffered)."""
        buffer = self._buffer
        stop = -1
        if buffer:  # the terminator may straddle the reads
            tail = bytes(buffer[1 - len(terminator) :])
            at = (tail + data[pos : pos + len(terminator) - 1]).find(terminator)
            if at >= 0:
                stop = pos + at + len(terminator) - len(tail)
        if stop < 0:
            at = data.find(terminator, pos)
            stop = at + len(terminator) if at >= 0 else -1
        if stop < 0:
            buffer += data[pos:]
            if len(buffer) > limit:
                self._lose()
            return None, len(data)
        if not buffer:
            return data[pos:stop], stop
        buffer += data[pos:stop]
        piece = bytes(buffer)
        buffer.clear()
        return piece, stop

    def _read_head(self, data: bytes, pos: int) -> int:
        if not self._buffer:
            # Empty lines before a request line are ignored (RFC 9112 section 2.2).
            while pos < len(data) and data[pos] in _CRLF:
                pos += 1
            if pos == len(data):
                return pos
        head, pos = self._take_until(data, pos, b"\r\n\r\n", _MAX_HEAD)
        if head is not None:
            self._head(head[:-4])
        return pos

    def _head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        method = lines[0].partition(b" ")[0]
        length: int | None = None
        codings: list[bytes] = []
        announced = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            name = name.lower()
            if not colon or name == b"upgrade":
                self._lose()  # folded or broken (refused by the parser), or another protocol
                return
            if name == b"content-length":
                value = value.strip(b" \t")
                if length is not None or not value.isdigit():
                    self._lose()  # refused by the parser
                    return
                length = int(value)
            elif name == b"transfer-encoding":
                codings += [coding.strip(b" \t").lower() for coding in value.split(b",")]
            elif name == b"trailer":
                announced = announced or bool(value.strip(b" \t"))
        chunked = bool(codings)
        if method == b"CONNECT" or (chunked and (codings[-1] != b"chunked" or length is not None)):
            self._lose()  # a tunnel; or framing the parser refuses
            return
        if len(self._ahead) >= _MAX_AHEAD:
            self._lose()
            return
        trailers = BodyTrailers() if chunked and announced else None
        self._ahead.append(_Head(method.decode("latin-1"), chunked, length or 0, trailers))
        if chunked:
            self._state, self._current = _SIZE, trailers
        elif length:
            self._state, self._remaining = _FIXED, length

    def _size_line(self, line: bytes) -> None:
        size = line.partition(b";")[0].rstrip(b" \t")
        if b"\r" in line or b"\n" in line or not 0 < len(size) <= 16 or size.strip(_HEX):
            self._lose()
            return
        self._remaining = int(size, 16)
        if self._remaining:
            self._state = _DATA
        else:  # the last chunk: the trailer section follows
            self._state, self._fields = _TRAILER, {}

    def _trailer_line(self, line: bytes) -> None:
        if not line:  # the blank line: the message ends
            if self._current is not None:
                self._current.fields = self._fields
            self._state, self._current, self._fields = _HEAD, None, {}
            return
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip(b" \t") or b"\r" in line or b"\n" in line:
            self._lose()
            return
        if self._current is not None:
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            before = self._fields.get(key)
            self._fields[key] = text if before is None else f"{before}, {text}"

    def _lose(self) -> None:
        self._state = _LOST
        self._buffer = bytearray()
        for head in self._ahead:
            if head.trailers is not None:
                head.trailers.lost = True
        self._ahead.clear()
        if self._current is not None:
            self._current.lost = True
            self._current = None

    # -- aiohttp's view ----------------------------------------------------------------------

    def _pair(self, parsed: Iterator[tuple[Any, Any]]) -> None:
        for message, body in parsed:
            if isinstance(message, ErrInfo) or not self._ahead:
                self._lose()
                return
            head = self._ahead.popleft()
            length = message.headers.get("Content-Length")
            if (
                message.method != head.method
                or bool(message.chunked) != head.chunked
                or (not head.chunked and int(length or 0) != head.length)
            ):
                if head.trailers is not None:
                    head.trailers.lost = True
                self._lose()
                return
            if head.trailers is not None:
                self._kept.append((body, head.trailers))


@runtime_checkable
class ReadsTrailers(Protocol):
    """A connection (aiohttp's ``request.protocol``) that keeps its bodies' trailers."""

    trailer_reader: TrailerReader


def reads_trailers(request: web.BaseRequest) -> bool:
    """Whether the request's connection reads trailers (the server's own runner's do)."""
    return isinstance(request.protocol, ReadsTrailers)


def body_trailers(request: web.BaseRequest) -> BodyTrailers | None:
    """The trailers the request's head announced, read as its body arrives; None when it
    announced none, its body is not chunked, or its connection cannot read them."""
    protocol = request.protocol
    if not isinstance(protocol, ReadsTrailers):
        return None
    return protocol.trailer_reader.take(request.content)
