"""sha256 of a file as its chunks arrive, computed off the event loop.

``hashlib`` releases the GIL while it hashes more than 2 KiB, so a thread hashes one block
(about 1 MiB of chunks) while the loop receives the next: the digest is ready about when the
last byte is. A block is handed over whole (one thread hop per MiB, not per chunk), and one
block per file is in flight, which bounds the memory the hashing keeps alive. What is left
below :data:`INLINE_BYTES` at the end is hashed on the loop: 64 KiB take ~40 µs, less than the
hop to a thread and back. The chunks are ``bytes`` or views of ``bytes``, never reused, so the
thread may read them while the storage writes them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from clustr_aio.storage.base import Buffer

__all__ = ["BLOCK_BYTES", "INLINE_BYTES", "StreamHasher"]

BLOCK_BYTES: Final = 1024 * 1024
INLINE_BYTES: Final = 64 * 1024


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Made on first use (in the worker that hashes, never at import nor before a fork)."""
    return ThreadPoolExecutor(4, thread_name_prefix="clustr-hash")


def _update(digest: hashlib._Hash, blocks: list[Buffer]) -> None:
    for block in blocks:
        digest.update(block)


class StreamHasher:
    __slots__ = ("_digest", "_in_flight", "_pending", "_pending_bytes")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pending: list[Buffer] = []
        self._pending_bytes = 0
        self._in_flight: asyncio.Future[None] | None = None

    async def update(self, chunk: Buffer) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= BLOCK_BYTES:
            await self._submit()

    async def _submit(self) -> None:
        if self._in_flight is not None:
            await self._in_flight
        blocks, self._pending, self._pending_bytes = self._pending, [], 0
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(_pool(), _update, self._digest, blocks)

    async def hexdigest(self) -> str:
        if self._pending_bytes >= INLINE_BYTES:
            await self._submit()
        if self._in_flight is not None:
            await self._in_flight
            self._in_flight = None
        _update(self._digest, self._pending)
        self._pending, self._pending_bytes = [], 0
        return self._digest.hexdigest()
