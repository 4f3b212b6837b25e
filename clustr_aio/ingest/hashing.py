"""sha256 of a file as its chunks arrive, computed on another core while the loop receives.

One thread per process hashes (``hashlib`` releases the GIL while it hashes more than 2 KiB),
fed by a queue: :meth:`StreamHasher.update` hands a chunk of :data:`HAND_BYTES` or more over as
it is (smaller ones gathered until they are that much), with no await and no round trip to
the loop: putting it on the queue is all the loop does. The thread takes the pieces in order,
so each digest sees its file's bytes in order, and it never wakes the loop for a piece: only a
barrier (:func:`all_hashed`), which says that everything handed over before it is hashed. A
batch of files asks for it once, after its last file, so it never waits for a digest while
there are files to receive (500 photos of 500 KB: no round trip per file, and all but the last
one's hashing done while the next parts arrived). :meth:`StreamHasher.hexdigest` is the
digest of one file at once: on the loop when less than :data:`INLINE_BYTES` of it is left and
the thread holds none of it (64 KiB take ~40 µs, less than the hop to a thread and back), else
after a barrier. The chunks are ``bytes`` or views of ``bytes``, never reused, so the thread
may read them while the storage writes them.

What the hashers of a process keep alive is bounded, as the storage bounds what waits for the
disk. Every byte counts from the moment it is given to :meth:`~StreamHasher.update` until it is
hashed; while all of them together are over :data:`BUDGET_BYTES` (a crowd, or a thread that
cannot keep up), the upload that is given a chunk pays for it: it hashes what it holds at once
on the loop when the thread holds nothing of it, else it hands it over and waits for a
barrier. Gathered small chunks of a file whose bytes stop coming are handed over after
:data:`IDLE_SECONDS` (otherwise 300 stalled uploads would keep up to 64 KiB of reads each
alive, long after the storage wrote them out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import ClassVar, Final

from clustr_aio.storage.base import Buffer

__all__ = [
    "BUDGET_BYTES",
    "HAND_BYTES",
    "IDLE_SECONDS",
    "INLINE_BYTES",
    "StreamHasher",
    "all_hashed",
    "unhashed_bytes",
]

HAND_BYTES: Final = 64 * 1024
INLINE_BYTES: Final = 64 * 1024
IDLE_SECONDS: Final = 0.25
BUDGET_BYTES: Final = 8 * 1024 * 1024


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have been cancelled
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class _Barrier:
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class _HashThread:
    """The process's hashing thread and its queue. Its items are ``(hasher, pieces, size)``
    (hash the pieces into that hasher's digest) or a barrier (resolve its future).

    Two counters per side, each written by one thread only (read by the other without a
    lock): the loop counts the bytes and items it put, the thread those it hashed."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[StreamHasher, list[Buffer], int] | _Barrier] = (
            queue.SimpleQueue()
        )
        self.put_bytes = 0
        self.put_items = 0
        self.hashed_bytes = 0
        self.hashed_items = 0
        threading.Thread(target=self._run, name="clustr-hash", daemon=True).start()

    def hand_over(self, hasher: StreamHasher, pieces: list[Buffer], size: int) -> int:
        """Queue ``pieces`` for ``hasher``; returns the item's number (see ``hashed_items``)."""
        self.put_bytes += size
        self.put_items += 1
        self.queue.put((hasher, pieces, size))
        return self.put_items

    async def barrier(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.queue.put(_Barrier(future, loop))
        await future

    def _run(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            if isinstance(item, _Barrier):
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    item.loop.call_soon_threadsafe(_resolve, item.future)
                continue
            hasher, pieces, size = item
            del item
            _hash_into(hasher, pieces)
            del pieces  # let go of before they stop counting
            self.hashed_bytes += size
            self.hashed_items += 1


def _hash_into(hasher: StreamHasher, pieces: list[Buffer]) -> None:
    """(A function of its own: no piece stays referenced by a loop variable once hashed.)"""
    try:
        update = hasher.digest.update
        for piece in pieces:
            update(piece)
    except BaseException as error:
        hasher.failure = error  # raised by the digest, to whoever asks for it


_thread: _HashThread | None = None


def _forget_thread() -> None:
    global _thread
    _thread = None


os.register_at_fork(after_in_child=_forget_thread)  # threads do not survive a fork


def _hash_thread() -> _HashThread:
    """Made on first use, in the process that hashes."""
    global _thread
    if _thread is None:
        _thread = _HashThread()
    return _thread


def unhashed_bytes() -> int:
    """Bytes given to this process's hashers and not hashed yet."""
    thread = _thread
    queued = thread.put_bytes - thread.hashed_bytes if thread is not None else 0
    return StreamHasher.gathered + queued


async def all_hashed() -> None:
    """Wait until every chunk handed over so far (by any hasher of this process, including
    those :meth:`StreamHasher.finish` handed over) is hashed."""
    thread = _thread
    if thread is not None and thread.hashed_items < thread.put_items:
        await thread.barrier()


class StreamHasher:
    """The sha256 of one file's chunks. Call :meth:`release` when the file is abandoned."""

    gathered: ClassVar[int] = 0
    """Bytes gathered by every hasher of the process (one event loop), not yet handed over."""

    __slots__ = ("_gathered", "_gathered_bytes", "_idle_timer", "_last_item", "digest", "failure")

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.failure: BaseException | None = None
        """Set by the hashing thread if it could not hash a piece (raised by the digest)."""
        self._gathered: list[Buffer] = []
        self._gathered_bytes = 0
        self._last_item = 0  # the number of the last item handed over (0: none)
        self._idle_timer: asyncio.TimerHandle | None = None

    async def update(self, chunk: Buffer) -> None:
        """Hand ``chunk`` over (or gather it): waits only when the process is over budget."""
        self._gathered.append(chunk)
        self._gathered_bytes += len(chunk)
        StreamHasher.gathered += len(chunk)
        if self._gathered_bytes >= HAND_BYTES:
            self._hand_over()
        elif self._idle_timer is None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(IDLE_SECONDS, self._hand_over)
        if unhashed_bytes() > BUDGET_BYTES:
            await self._pay_for_crowd()

    async def _pay_for_crowd(self) -> None:
        if self._in_thread():
            self._hand_over()
            await _hash_thread().barrier()
        else:  # nothing of this file in the queue: its bytes can be hashed here, in order
            self._hash_here()

    def finish(self) -> None:
        """Hand over what is left: the digest is :meth:`result` once :func:`all_hashed` has
        returned. No chunk may be given after this."""
        self._hand_over()

    async def hexdigest(self) -> str:
        """The digest of every chunk given, now (no chunk may be given after this)."""
        if not self._in_thread() and self._gathered_bytes < INLINE_BYTES:
            self._hash_here()
        else:
            self._hand_over()
            await _hash_thread().barrier()
        return self.result()

    def result(self) -> str:
        """The hex digest, once every chunk given is hashed (after :meth:`finish` and
        :func:`all_hashed`, or :meth:`hexdigest`)."""
        assert not self._gathered, "finish() first"
        assert not self._in_thread(), "all_hashed() first"
        if self.failure is not None:
            raise self.failure
        return self.digest.hexdigest()

    def release(self) -> None:
        """Forget what was not handed over (the file was refused, or its client went away);
        what was is hashed and dropped by the thread."""
        self._take()

    def _in_thread(self) -> bool:
        """Whether the hashing thread holds pieces of this file that it has not hashed."""
        return self._last_item > 0 and _hash_thread().hashed_items < self._last_item

    def _hand_over(self) -> None:
        size = self._gathered_bytes
        pieces = self._take()
        if size:
            self._last_item = _hash_thread().hand_over(self, pieces, size)

    def _hash_here(self) -> None:
        update = self.digest.update
        for piece in self._take():
            update(piece)

    def _take(self) -> list[Buffer]:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        pieces, self._gathered = self._gathered, []
        StreamHasher.gathered -= self._gathered_bytes
        self._gathered_bytes = 0
        return pieces
