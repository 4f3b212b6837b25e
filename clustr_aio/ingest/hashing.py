"""sha256 of a file as its chunks arrive, computed off the event loop.

``hashlib`` releases the GIL while it hashes more than 2 KiB, so a thread hashes one block
(about 1 MiB of chunks) while the loop receives the next: the digest is ready about when the
last byte is. A block is handed over whole (one thread hop per MiB, not per chunk), and one
block per file is in flight, which bounds the memory the hashing keeps alive. What is left
below :data:`INLINE_BYTES` at the end is hashed on the loop: 64 KiB take ~40 µs, less than the
hop to a thread and back. The chunks are ``bytes`` or views of ``bytes``, never reused, so the
thread may read them while the storage writes them.

What the hashers of a process hold is bounded, as the storage bounds what waits for the disk:
a block that does not fill within :data:`IDLE_SECONDS` of its first chunk (a stalled upload)
is handed over as it is, and while all of them together hold more than :data:`BUDGET_BYTES`
(a crowd) every chunk is hashed at once, on the loop. Otherwise the hashers alone would keep
up to a megabyte of every stalled or crowded upload's chunks alive, long after the storage
wrote them out (300 stalled uploads: 296 MiB of RSS instead of about 120).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Final

from clustr_aio.storage.base import Buffer

__all__ = ["BLOCK_BYTES", "BUDGET_BYTES", "IDLE_SECONDS", "INLINE_BYTES", "StreamHasher"]

BLOCK_BYTES: Final = 1024 * 1024
INLINE_BYTES: Final = 64 * 1024
IDLE_SECONDS: Final = 0.25
BUDGET_BYTES: Final = 8 * 1024 * 1024


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Made on first use (in the worker that hashes, never at import nor before a fork)."""
    return ThreadPoolExecutor(4, thread_name_prefix="clustr-hash")


def _update(digest: hashlib._Hash, blocks: list[Buffer]) -> None:
    for block in blocks:
        digest.update(block)


class StreamHasher:
    """The sha256 of one file's chunks. Call :meth:`release` when the file is abandoned."""

    held: ClassVar[int] = 0
    """Bytes not yet handed to a thread, by every hasher of the process (one event loop)."""

    __slots__ = ("_digest", "_idle_timer", "_in_flight", "_pending", "_pending_bytes")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pending: list[Buffer] = []
        self._pending_bytes = 0
        self._in_flight: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    async def update(self, chunk: Buffer) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        StreamHasher.held += len(chunk)
        if StreamHasher.held > BUDGET_BYTES:
            # A crowd: hash right here, so that no chunk waits in a thread's queue either.
            while self._in_flight is not None and not self._in_flight.done():
                await self._in_flight
            _update(self._digest, self._take())
        elif self._pending_bytes >= BLOCK_BYTES:
            await self._submit()
        elif self._idle_timer is None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(IDLE_SECONDS, self._hand_over_idle)

    def _hand_over_idle(self) -> None:
        """Timer: the block has waited long enough; hash what there is, unless a block is
        still being hashed (then the next update or the digest hands it over)."""
        self._idle_timer = None
        if self._pending and (self._in_flight is None or self._in_flight.done()):
            self._start()

    async def _submit(self) -> None:
        # A loop: while this waits, the idle timer may hand over another block (blocks must
        # be hashed one after the other, in order).
        while self._in_flight is not None and not self._in_flight.done():
            await self._in_flight
        self._start()

    def _start(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        blocks = self._take()
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(_pool(), _update, self._digest, blocks)

    async def hexdigest(self) -> str:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._pending_bytes >= INLINE_BYTES:
            await self._submit()
        if self._in_flight is not None:
            await self._in_flight
            self._in_flight = None
        _update(self._digest, self._take())
        return self._digest.hexdigest()

    def release(self) -> None:
        """Forget what was not hashed yet (the file was refused, or its client went away)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._take()

    def _take(self) -> list[Buffer]:
        blocks, self._pending = self._pending, []
        StreamHasher.held -= self._pending_bytes
        self._pending_bytes = 0
        return blocks
