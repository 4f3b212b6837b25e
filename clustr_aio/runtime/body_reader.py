"""An upload's body read around aiohttp's parser: ``recv_into`` reused buffers, no copies.

aiohttp hands a body to its handler through three copies of every byte: the event loop's read
into a new ``bytes`` (uvloop reads into its own buffer, then copies), llhttp's ``on_body`` into
another, and ``StreamReader.readany`` joining what was buffered. For a gigabyte that is most of
the server's CPU beyond the two copies nginx makes too (issue 16). Here, once the upload route
has accepted a request's head (:func:`body_chunks`), the connection's transport is given to a
:class:`BodyReader`, an ``asyncio.BufferedProtocol``: the kernel copies the body straight into
256 KiB blocks, and the multipart scanner gets windows of them
(:class:`~clustr_aio.ingest.multipart.Window`), whose pieces it hands on as ``memoryview``
slices. Once the body's last byte has arrived (``Content-Length`` of them, never one more: each
read is bounded by what is left), the transport goes back to the connection with a new parser,
as for its next request: keep-alive and pipelining go on as before.

**Blocks** are reused only when nothing can see them any more: a block is written again only
once it is not the buffer of the scanner's last window and no ``memoryview`` of it exists (a
``bytearray`` with a view cannot change its size, :func:`_exported`): a piece still queued for
the disk, the hasher or a deferred file keeps its block out of use. Up to :data:`_KEPT` free
blocks are kept by the process for the next upload, :data:`_KEPT_LONG` while a long body is
read (those the hashing thread is behind on come back a little later); at most
:data:`MAX_READERS` bodies are read this way at a time (a stalled one holds its block), and
none once the connection guard counts a crowd (:data:`~clustr_aio.runtime.protocol.CROWD`):
those take aiohttp's path, whose reads are 16 KiB there.

**Everything else takes aiohttp's path, unchanged**: a body of unknown length (chunked), one
smaller than :data:`MIN_BODY`, one aiohttp holds whole already (pipelined with what follows), a
TLS transport, a connection that is not a :class:`GuardedRequestHandler` or has requests queued,
a body stream that failed. What aiohttp had buffered of the body before the hand-over is read
first, in order.

**What the connection guarantees still holds**: the body's bytes count for the body idle
timeout and ``MIN_BODY_RATE`` as they arrive (the guard's failure fails this reader, 408), the
scanner falling behind pauses the socket as aiohttp's stream does (a pause the guard does not
count against the client), a disconnect fails the read as aiohttp's does
(``ConnectionResetError``), and a handler that stops before the end (an early 413 or 415) has
the rest of the body read and dropped (aiohttp's lingering read), after which the connection
serves its next request. Events the transport sends while the reader has it (writes paused or
resumed, EOF, the connection lost) go on to the connection.

Private aiohttp names, through :mod:`clustr_aio.compat`: the connection's parser
(``GUARDED_HANDLER_ATTRIBUTES``), replaced by :func:`~clustr_aio.compat.fresh_request_parser`.
tests/runtime/test_body_reader.py covers each path on both event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Final

from aiohttp import hdrs, web

from clustr_aio.ingest.hashing import BATCH_BYTES, BUDGET_BYTES
from clustr_aio.ingest.multipart import ReadChunk, Window
from clustr_aio.runtime.protocol import GuardedRequestHandler

__all__ = ["LONG_BODY", "MAX_READERS", "MIN_BODY", "BlockPool", "BodyReader", "body_chunks"]

BLOCK: Final = 256 * 1024
"""The size of each block the body is received into."""
MIN_BODY: Final = 128 * 1024
"""Bodies still to come below this take aiohttp's path: the hand-over (two protocol switches,
a block) is not worth it for a few pieces. C's 500 KB photos are worth it, now that a small
upload makes no thread round trip: C0 beside nginx, 6 interleaved rounds on a shared machine,
server CPU ÷ nginx's 2.45 with a MIN_BODY of 1 MiB, 2.21 with 128 KiB, 2.22 with 16 KiB
(rate 0.59, 0.73, 0.66). (With the round trips, 1 MiB and 256 KiB had measured alike: 2.89
against 2.85 ms.)"""
MAX_READERS: Final = 4
"""Bodies read this way at a time, per process (each holds up to three blocks of its own)."""
_KEPT: Final = 4
"""Free blocks kept for the next upload (a block made anew is zeroed first)."""
LONG_BODY: Final = 2 * BATCH_BYTES
"""A body at least this long (still to come at the hand-over) outlasts the hashing thread's
lag: while one is read, the pool keeps :data:`_KEPT_LONG` blocks."""
_KEPT_LONG: Final = BUDGET_BYTES // BLOCK
"""Free blocks kept while a long body is read: as many as the hashing thread may still be
reading (:data:`~clustr_aio.ingest.hashing.BUDGET_BYTES` of pieces wait for it at most). A
block given back while the thread has yet to hash its pieces is not free for the next take, and
its open batch and the one it hashes hold 8-10 blocks: with 4 kept, the reader made a block
anew for every third it took in bench B (500 photos: about 270 of 930), each zeroed and
faulted in on the loop (3,478 page faults per upload against 442 with these), the one it
replaced freed by whoever let go of its last view, often the hashing thread, holding the GIL
(a few ms per upload in all: below what bench.ab tells apart on a shared machine).
Once no long body is being read the pool goes back to :data:`_KEPT`: kept all the time, the
blocks took heap that the short bodies' reads would have reused (bench C peaked at 68 MiB
instead of 61)."""
_MIN_ROOM: Final = 16 * 1024
"""A block with less room than this left is retired: a read that small is not worth it."""
_HIGH_WATER: Final = 2 * BLOCK
"""Bytes received and not yet read by the scanner above which the socket is paused. Two
blocks, not one: a read fills a block at once, so with one every block paused and resumed the
socket (aiohttp's protocol, its parser and the transport, an ``epoll_ctl`` each way), though
the scanner would have read it in the same loop iteration: 950 pauses in bench B0's upload
of 500 photos."""
_SCRATCH: Final = 64 * 1024
"""What the rest of a body the handler no longer wants is read into, and dropped."""


def _exported(block: bytearray) -> bool:
    """Whether a ``memoryview`` of ``block`` exists: a bytearray whose buffer is exported cannot
    change its size (``BufferError``). Blocks are made with room for the one byte this adds."""
    try:
        block.append(0)
    except BufferError:
        return True
    del block[-1]
    return False


class BlockPool:
    """The process's free blocks (on the loop thread only)."""

    __slots__ = ("_free", "long_readers", "readers", "size")

    def __init__(self, size: int = BLOCK) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self.readers = 0
        """Bodies being read through this pool now."""
        self.long_readers = 0
        """Those of them that were :data:`LONG_BODY` or longer."""

    def take(self) -> bytearray:
        """A block nothing sees: a kept one, or a new one."""
        for at, block in enumerate(self._free):
            if not _exported(block):
                del self._free[at]
                return block
        block = bytearray(self.size + 1)
        del block[-1]  # its allocation keeps the byte, so _exported's test never reallocates
        return block

    def give(self, block: bytearray) -> None:
        """``block`` is no longer any reader's; views of it may live on (see :meth:`take`)."""
        if len(self._free) < (_KEPT_LONG if self.long_readers else _KEPT):
            self._free.append(block)

    def started(self, *, long: bool) -> None:
        """A body is read through the pool from now on (``long``: :data:`LONG_BODY` or more)."""
        self.readers += 1
        self.long_readers += long

    def finished(self, *, long: bool) -> None:
        """A body :meth:`started` is no longer read."""
        self.readers -= 1
        self.long_readers -= long
        if not self.long_readers:
            del self._free[_KEPT:]


POOL: Final = BlockPool()


@contextlib.contextmanager
def body_chunks(request: web.Request) -> Iterator[ReadChunk]:
    """How to read ``request``'s body, from the route that has accepted its head: a
    :class:`BodyReader`'s ``read`` where it may take the connection, else aiohttp's stream,
    a piece at a time (:func:`_parsed_pieces`). Leaving gives the connection back
    (:meth:`BodyReader.release`)."""
    reader = BodyReader.take(request, POOL)
    if reader is None:
        yield _parsed_pieces(request)
        return
    try:
        yield reader.read
    finally:
        reader.release()


def _parsed_pieces(request: web.Request) -> ReadChunk:
    """aiohttp's path: each read one piece of the body as the parser handed it on
    (``readchunk``), not every piece buffered so far joined into a new ``bytes``
    (``readany``): for a 500 KB photo that join copied most of the body once more (bench C,
    issue 16). A chunked body is read with ``readany``: ``readchunk`` would stop at the end
    of each of its chunks, however small they are."""
    content = request.content
    if hdrs.TRANSFER_ENCODING in request.headers:
        return content.readany

    async def read() -> bytes:
        data, _ = await content.readchunk()  # b"" only at the end: no chunk ends here
        return data

    return read


class BodyReader(asyncio.BufferedProtocol):
    """The protocol of a connection's transport while its request's body arrives."""

    def __init__(
        self,
        connection: GuardedRequestHandler,
        request: web.Request,
        transport: asyncio.Transport,
        remaining: int,
        pool: BlockPool,
    ) -> None:
        self._connection = connection
        self._request = request
        self._transport = transport
        self._pool = pool
        self._remaining = remaining
        """Body bytes still to come from the socket."""
        self._long = remaining >= LONG_BODY
        self._first = b""
        """What aiohttp had received of the body before the hand-over."""
        self._block: bytearray | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._segments: deque[Window] = deque()
        """Received, not yet read: windows, oldest first."""
        self._unread = 0
        self._retired: deque[bytearray] = deque()
        """Blocks no longer filled that the scanner may still read, or hold, oldest first."""
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self._scratch: memoryview | None = None
        """Set once the handler has let go of an unfinished body: the rest is dropped."""
        self._attached = True
        """Whether this reader is the transport's protocol."""

    @classmethod
    def take(cls, request: web.Request, pool: BlockPool) -> BodyReader | None:
        """Take ``request``'s connection for the rest of its body, or None (see the module)."""
        connection = request.protocol
        transport = request.transport
        length = request.content_length
        content = request.content
        if (
            pool.readers >= MAX_READERS
            or not isinstance(connection, GuardedRequestHandler)
            or transport is None
            or transport.is_closing()
            or transport.get_extra_info("sslcontext") is not None
            or length is None
            or hdrs.TRANSFER_ENCODING in request.headers
            or content.exception() is not None
            or content.is_eof()
            or not connection.may_take_body()
        ):
            return None
        remaining = length - content.total_bytes
        if remaining < MIN_BODY:
            return None
        reader = cls(connection, request, transport, remaining, pool)
        pool.started(long=reader._long)
        connection.body_taker = reader
        transport.set_protocol(reader)
        # What aiohttp received already comes first. Reading it may resume the transport
        # (the stream's low water mark), which now reads into this reader's blocks.
        reader._first = content.read_nowait(-1)
        return reader

    # -- the scanner's side ----------------------------------------------------------------

    async def read(self) -> bytes | Window:
        """The next bytes of the body, ``b""`` after its last; raises what failed it."""
        if self._first:
            first, self._first = self._first, b""
            return first
        while True:
            if self._error is not None:
                raise self._error
            if self._segments:
                return self._next_window()
            if not self._remaining:
                return b""
            if self._paused:
                self._resume()
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _next_window(self) -> Window:
        # No await from here to the caller: the scanner has let go of an older block (its
        # last window's buffer) before anything can write into it.
        window = self._segments.popleft()
        self._unread -= window.stop - window.start
        retired = self._retired
        while retired and retired[0] is not window.buffer:
            self._pool.give(retired.popleft())
        if self._paused and self._unread < _HIGH_WATER // 2:
            self._resume()
        return window

    def release(self) -> None:
        """The handler is done with the body: the blocks go back to the pool. If the body has
        not all arrived, the rest is read and dropped while the answer goes out (aiohttp's
        lingering read), then the connection has its transport back for its next request; a
        failed body's connection is being closed, and what still comes is dropped meanwhile."""
        self._segments.clear()
        self._unread = 0
        self._first = b""
        for block in self._retired:
            self._pool.give(block)
        self._retired.clear()
        if self._block is not None:
            self._pool.give(self._block)
            self._block = self._view = None
        if self._attached:  # the body has not all arrived
            self._scratch = memoryview(bytearray(_SCRATCH))
            if self._paused:
                self._resume()
        else:
            self._finish()

    # -- the transport's side --------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        remaining = self._remaining
        if self._scratch is not None:
            return self._scratch[: min(len(self._scratch), remaining)]
        block, view, filled = self._block, self._view, self._filled
        if block is None or view is None or len(block) - filled < _MIN_ROOM:
            if block is not None:
                self._retired.append(block)
            self._block = block = self._pool.take()
            self._view = view = memoryview(block)
            self._filled = filled = 0
        return view[filled : filled + min(len(block) - filled, remaining)]

    def buffer_updated(self, nbytes: int) -> None:
        self._remaining -= nbytes
        self._connection.body_bytes_arrived(nbytes)
        if self._scratch is None:
            block = self._block
            assert block is not None
            start, self._filled = self._filled, self._filled + nbytes
            segments = self._segments
            if segments and segments[-1].buffer is block and segments[-1].stop == start:
                segments[-1].stop = self._filled
            else:
                segments.append(Window(block, start, self._filled))
            self._unread += nbytes
            self._wake()
            if self._remaining and self._unread >= _HIGH_WATER and not self._paused:
                self._paused = True
                self._connection.pause_reading()  # as aiohttp's stream does: not the client's
        if not self._remaining:
            self._give_back()

    def eof_received(self) -> bool | None:
        self._connection.eof_received()  # aiohttp's: nothing, and the transport closes
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._attached = False
        self.fail(exc if exc is not None else ConnectionResetError("Connection lost"))
        self._finish()
        self._connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self._connection.pause_writing()

    def resume_writing(self) -> None:
        self._connection.resume_writing()

    # -- the connection's side -------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """The body failed (the guard's timeout, a disconnect): reading raises ``error``."""
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        self._paused = False
        if self._attached:
            self._connection.resume_reading()

    def _give_back(self) -> None:
        """The body's last byte has arrived: the connection parses what follows."""
        self._detach()
        self._request.content.feed_eof()  # aiohttp's own reads of it (lingering) end here

    def _detach(self) -> None:
        self._attached = False
        self._connection.reset_parser()
        self._transport.set_protocol(self._connection)
        self._finish()

    def _finish(self) -> None:
        if self._connection.body_taker is self:
            self._connection.body_taker = None
            self._pool.finished(long=self._long)
        self._scratch = None
