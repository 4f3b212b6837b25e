"""A push driver for parsers written as generators: the parser asks for bytes, the driver
feeds them from the chunks as they arrive, without holding more than the parser asked for.

A parser yields requests and is sent their answers:

- :class:`Read` ``(n)``: the next ``n`` bytes, as one ``bytes`` (for headers; copied);
- :class:`ReadOrEnd` ``(n)``: the same, or ``b""`` when the input ends cleanly right there;
- :class:`Pass` ``(n, keep)``: the next ``n`` bytes go to the output untouched (memoryview
  slices of the input chunks, not copies) or are skipped; answered with their CRC-32 when
  ``crc`` was given a start value;
- :class:`Emit` ``(data)``: bytes of the parser's own into the output;
- :class:`PassUntil` ``(pattern)``: pass everything through the first ``pattern`` (two bytes);
- :class:`Rest` ``(keep)``: whatever follows, to the end, is kept or dropped; the last request;
- :class:`RestHolding` ``(pattern)``: whatever follows, to the end, is kept, and must hold
  ``pattern`` (two bytes) somewhere: the output of :class:`PassUntil` then ``Rest(keep=True)``,
  for a fraction of its work (see :class:`RestHolding`); also a last request.

Input that ends while a request waits for more raises the parser's truncation error, naming
what it was reading (``what``).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final

from clustr_aio.storage.base import Buffer

__all__ = [
    "Emit",
    "Parser",
    "ParserGenerator",
    "Pass",
    "PassUntil",
    "Read",
    "ReadOrEnd",
    "Request",
    "Rest",
    "RestHolding",
    "SubParser",
    "held_bytes",
]


@dataclass(slots=True)
class Read:
    n: int
    what: str


@dataclass(slots=True)
class ReadOrEnd:
    n: int
    what: str


@dataclass(slots=True)
class Pass:
    n: int
    keep: bool
    what: str
    crc: int | None = None


@dataclass(slots=True)
class Emit:
    data: bytes


@dataclass(slots=True)
class PassUntil:
    pattern: bytes
    what: str


@dataclass(slots=True)
class Rest:
    keep: bool


@dataclass(slots=True)
class RestHolding:
    """Where only whether ``pattern`` occurs matters, not where (a JPEG's EOI when what follows
    it is kept anyway), the bytes are passed on as they come and not searched as they pass:
    the end is looked at first (a JPEG's last two bytes are its EOI, unless something follows
    it), and only if the pattern is not there are the bytes kept back searched. They are kept
    back (views of the chunks, no copies) up to :data:`HOLD_BYTES` per file and
    :data:`HELD_BUDGET` for every file of the process together; past either, the file that
    is given a chunk has what it holds searched then, and let go of (so uploads that stall,
    hundreds at a time, hold no more than the budget between them). Searching each byte as it
    passes was 1.1 ns a byte (``re``; ``bytes.find`` 3 ns): half of a 500 KB photo's check."""

    pattern: bytes
    what: str


Request = Read | ReadOrEnd | Pass | Emit | PassUntil | Rest | RestHolding

HOLD_BYTES: Final = 1024 * 1024
"""The most bytes :class:`RestHolding` keeps back unsearched, per file."""
HELD_BUDGET: Final = 4 * 1024 * 1024
"""The most bytes :class:`RestHolding` keeps back unsearched, every file of the process
together (give or take the chunk that crosses it)."""


class _Held:
    """What every parser holds back together (parsers run on event loop threads only)."""

    total = 0


def held_bytes() -> int:
    """Bytes that :class:`RestHolding` parsers keep back unsearched now, together."""
    return _Held.total


_COPY_LEFTOVER = 4096
ParserGenerator = Generator[Request, Any, None]
"""A parser: yields requests, is sent their answers (``Any``: each request's own type)."""
SubParser = Generator[Request, Any, bytes]
"""A piece of a parser (``yield from``) that returns the bytes it read."""


class Parser:
    """Runs one parser generator over a stream of chunks; ``written`` counts output bytes,
    ``dropped_tail`` the bytes a ``Rest(keep=False)`` dropped, ``verbatim_until`` (None while
    the output is the input byte for byte) how many of the first output bytes are the input's
    (a file whose output is its input need not be written again: see
    :mod:`clustr_aio.ingest.in_place`)."""

    __slots__ = (
        "_echo",
        "_found",
        "_gen",
        "_held",
        "_held_bytes",
        "_last",
        "_out",
        "_queue",
        "_queued",
        "_request",
        "_truncated",
        "dropped_tail",
        "verbatim_until",
        "written",
    )

    def __init__(self, gen: ParserGenerator, truncated: Callable[[str], Exception]) -> None:
        self._gen = gen
        self._truncated = truncated
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._out: list[Buffer] = []
        self._last = -1  # the last byte passed by PassUntil, for a pattern split across chunks
        self.written = 0
        self.dropped_tail = 0
        self.verbatim_until: int | None = None
        self._echo = bytearray()
        """Bytes read (:class:`Read`) while the output is verbatim, not yet emitted again."""
        self._held: list[Buffer] = []
        """:class:`RestHolding`: what passed and was not searched yet (after the last bytes of
        what was, for a pattern split across them)."""
        self._held_bytes = 0
        self._found = False
        self._request: Request = next(gen)

    def feed(self, chunk: Buffer) -> list[Buffer]:
        """The output due now that ``chunk`` arrived."""
        if len(chunk):
            self._queue.append(chunk if isinstance(chunk, memoryview) else memoryview(chunk))
            self._queued += len(chunk)
        self._advance(eof=False)
        if self._queue and self._queued <= _COPY_LEFTOVER:
            # A few bytes kept for the next request (half a header) must not keep the whole
            # read they are a slice of alive, while the client takes its time.
            self._queue = deque([memoryview(bytes(b"".join(self._queue)))])
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Buffer]:
        """The last output; raises if the parser was still waiting for bytes."""
        self._advance(eof=True)
        if self._echo:
            self._diverge()  # bytes read and never emitted
        out, self._out = self._out, []
        return out

    def _diverge(self) -> None:
        """The output stops being the input from here (what was emitted so far still is)."""
        if self.verbatim_until is None:
            self.verbatim_until = self.written
            self._echo = bytearray()

    def _passing(self) -> None:
        """Input bytes go to the output untouched: still verbatim only if every byte read
        before them was emitted again."""
        if self._echo:
            self._diverge()

    def _emit(self, data: Buffer) -> None:
        self._out.append(data)
        self.written += len(data)

    def _take(self, n: int) -> bytes:
        head = self._queue[0]
        if len(head) > n:  # the usual case: a header inside one chunk
            self._queue[0] = head[n:]
            return bytes(head[:n])
        parts = []
        while n:
            head = self._queue[0]
            if len(head) <= n:
                parts.append(self._queue.popleft())
                n -= len(head)
            else:
                parts.append(head[:n])
                self._queue[0] = head[n:]
                n = 0
        return b"".join(parts)

    def _pop(self, limit: int) -> memoryview:
        head = self._queue[0]
        if len(head) <= limit:
            return self._queue.popleft()
        self._queue[0] = head[limit:]
        return head[:limit]

    def _advance(self, *, eof: bool) -> None:
        # Requests are told apart by their exact type (none is subclassed), not by a chain of
        # isinstance() calls, the first with a union made anew each step (80 -> 75 µs of a
        # 500 KB photo's check).
        while True:
            request: Any = self._request  # of the type ``kind``
            kind = type(request)
            answer: object = None
            if kind is Read or kind is ReadOrEnd:
                if self._queued < request.n:
                    if not eof:
                        return
                    if not (kind is ReadOrEnd and self._queued == 0):
                        raise self._truncated(request.what)
                    answer = b""
                else:
                    self._queued -= request.n
                    answer = self._take(request.n)
                    if self.verbatim_until is None:
                        self._echo += answer
            elif kind is Pass:
                if request.n and self._queue:
                    if request.keep:
                        self._passing()
                    else:
                        self._diverge()  # bytes skipped
                while request.n and self._queue:
                    piece = self._pop(request.n)
                    request.n -= len(piece)
                    self._queued -= len(piece)
                    if request.crc is not None:
                        request.crc = zlib.crc32(piece, request.crc)
                    if request.keep:
                        self._emit(piece)
                if request.n:
                    if not eof:
                        return
                    raise self._truncated(request.what)
                answer = request.crc
            elif kind is Emit:
                if self.verbatim_until is None:
                    data, echo = request.data, self._echo
                    if echo[: len(data)] == data:
                        del echo[: len(data)]  # what was read, emitted again as it was
                    else:
                        self._diverge()
                self._emit(request.data)
            elif kind is PassUntil:
                if self._queue:
                    self._passing()
                if not self._pass_until(request.pattern):
                    if not eof:
                        return
                    raise self._truncated(request.what)
            elif kind is RestHolding:
                if self._queue:
                    self._passing()
                while self._queue:
                    piece = self._queue.popleft()
                    self._emit(piece)
                    if not self._found:
                        self._hold(piece, request.pattern)
                self._queued = 0
                if eof and not self._found and not self._search_held(request.pattern):
                    raise self._truncated(request.what)
                return
            else:  # Rest: the end
                if self._queue and request.keep:
                    self._passing()
                elif self._queue:
                    self._diverge()  # a tail dropped
                while self._queue:
                    piece = self._queue.popleft()
                    if request.keep:
                        self._emit(piece)
                    else:
                        self.dropped_tail += len(piece)
                self._queued = 0
                return
            self._request = self._gen.send(answer)

    def _hold(self, piece: Buffer, pattern: bytes) -> None:
        self._held.append(piece)
        self._held_bytes += len(piece)
        _Held.total += len(piece)
        if self._held_bytes > HOLD_BYTES or _Held.total > HELD_BUDGET:
            self._search_held(pattern)

    def __del__(self) -> None:
        # A file given up on (refused, its client gone). (getattr: __init__ may have failed.)
        _Held.total -= getattr(self, "_held_bytes", 0)

    def _search_held(self, pattern: bytes) -> bool:
        """Whether the bytes held (and so the bytes passed) hold ``pattern``; keeps the last
        ``len(pattern) - 1`` of them held."""
        held, m = self._held, len(pattern)
        if _last_bytes(held, m) == pattern:
            self._found = True
        else:
            search = _searcher(pattern)
            seam = b""  # the last bytes before the piece, for a pattern across the two
            for piece in held:
                if pattern in seam + bytes(piece[: m - 1]) or search(piece) is not None:
                    self._found = True
                    break
                seam = (seam + bytes(piece[-(m - 1) :]))[-(m - 1) :]
        self._held = [] if self._found else [_last_bytes(held, m - 1)]
        _Held.total -= self._held_bytes
        self._held_bytes = 0
        return self._found

    def _pass_until(self, pattern: bytes) -> bool:
        first, second = pattern[0], pattern[1]
        search = _searcher(pattern)
        while self._queue:
            head = self._queue[0]
            if self._last == first and head[0] == second:
                at = 1
            else:
                found = search(head)  # re searches any buffer: no copy of the chunk
                at = -1 if found is None else found.end()
            if at < 0:
                self._last = head[-1]
                self._queued -= len(head)
                self._emit(self._queue.popleft())
                continue
            self._last = -1
            self._queued -= at
            self._emit(self._pop(at))
            return True
        return False


def _last_bytes(pieces: list[Buffer], n: int) -> bytes:
    """The last ``n`` bytes of the pieces together (fewer if they hold fewer)."""
    tail = b""
    if n <= 0:
        return tail
    for piece in reversed(pieces):
        tail = bytes(piece[-(n - len(tail)) :]) + tail
        if len(tail) >= n:
            break
    return tail


@functools.cache
def _searcher(pattern: bytes) -> Callable[[Buffer], re.Match[bytes] | None]:
    return re.compile(re.escape(pattern)).search
