"""sha256 of a file as its chunks arrive, computed on another core while the loop receives.

One thread per process hashes (``hashlib`` releases the GIL while it hashes more than 2 KiB),
fed by a queue. :meth:`StreamHasher.update` adds the chunk to the process's open batch, of
every upload's chunks in the order they came, with no await: once the batch holds
:data:`BATCH_BYTES` it goes on the queue as one item. One wake-up of the thread per megabyte,
not per chunk nor per file: on a loaded machine each wake-up could cost the loop a
reschedule (788 of them per 500-photo upload took 0.23 s of its wall time, for 7 ms of CPU).
The thread takes the batches in order, so each digest sees its file's bytes in order, and it
never wakes the loop for one: only for a barrier (:func:`all_hashed`: the open batch is sent,
and the barrier comes back once everything before it is hashed). A request's upload asks for
it once, after its last file, so it never waits for a digest while there are files to
receive (500 photos of 500 KB: all but the last megabyte hashed while the next parts
arrived). The chunks are ``bytes`` or views of ``bytes``, never reused, so the thread may read
them while the storage writes them.

What the hashers of a process keep alive is bounded, as the storage bounds what waits for the
disk. Every byte counts from the moment it is given to :meth:`~StreamHasher.update` until it is
hashed; while all of them together are over :data:`BUDGET_BYTES` (a crowd, or a thread that
cannot keep up), the upload that is given a chunk waits until the thread has caught up. An
open batch that does not fill (stalled uploads) is sent after :data:`IDLE_SECONDS`: otherwise
it would keep up to a megabyte of their reads alive, long after the storage wrote them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import Final

from clustr_aio.storage.base import Buffer

__all__ = [
    "BATCH_BYTES",
    "BUDGET_BYTES",
    "IDLE_SECONDS",
    "StreamHasher",
    "all_hashed",
    "unhashed_bytes",
]

BATCH_BYTES: Final = 1024 * 1024
IDLE_SECONDS: Final = 0.25
BUDGET_BYTES: Final = 8 * 1024 * 1024

_Batch = list[tuple["StreamHasher", Buffer]]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have been cancelled
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class _Barrier:
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class _HashThread:
    """The process's hashing thread, its queue (of ``(batch, size)`` items and barriers) and
    the open batch (the loop's, not on the queue yet).

    The counters are each written by one thread only (read by the other without a lock): the
    loop counts the bytes and batches it sent, the thread those it hashed."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[_Batch, int] | _Barrier] = queue.SimpleQueue()
        self.batch: _Batch = []
        self.batch_bytes = 0
        self.sent_bytes = 0
        self.sent_batches = 0
        self.hashed_bytes = 0
        self.hashed_batches = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, name="clustr-hash", daemon=True).start()

    def add(self, hasher: StreamHasher, chunk: Buffer) -> int:
        """Add ``chunk`` to the open batch; returns that batch's number (see
        ``hashed_batches``)."""
        self.batch.append((hasher, chunk))
        self.batch_bytes += len(chunk)
        number = self.sent_batches + 1
        if self.batch_bytes >= BATCH_BYTES:
            self.send()
        elif self._idle_timer is None or self._timer_loop is not asyncio.get_running_loop():
            # (Another loop's timer: the one it was set on is gone, as between tests.)
            self._timer_loop = asyncio.get_running_loop()
            self._idle_timer = self._timer_loop.call_later(IDLE_SECONDS, self.send)
        return number

    def send(self) -> None:
        """Put the open batch on the queue (if it holds anything)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self.batch:
            return
        batch, size = self.batch, self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        self.sent_bytes += size
        self.sent_batches += 1
        self.queue.put((batch, size))

    async def barrier(self) -> None:
        """Send the open batch; return once everything sent is hashed."""
        self.send()
        if self.hashed_batches == self.sent_batches:
            return
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
            batch, size = item
            del item
            _hash_batch(batch)
            del batch  # let go of before they stop counting
            self.hashed_bytes += size
            self.hashed_batches += 1


def _hash_batch(batch: _Batch) -> None:
    """(A function of its own: no chunk stays referenced by a loop variable once hashed.)"""
    for hasher, chunk in batch:
        if hasher.failure is not None or hasher.released:
            continue
        try:
            hasher.digest.update(chunk)
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
    if thread is None:
        return 0
    return thread.batch_bytes + thread.sent_bytes - thread.hashed_bytes


async def all_hashed() -> None:
    """Wait until every chunk given so far (to any hasher of this process) is hashed."""
    if _thread is not None:
        await _thread.barrier()


class StreamHasher:
    """The sha256 of one file's chunks. Call :meth:`release` when the file is abandoned."""

    __slots__ = ("_finished", "_last_batch", "digest", "failure", "released")

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.failure: BaseException | None = None
        """Set by the hashing thread if it could not hash a chunk (raised by the digest)."""
        self.released = False
        """The file was abandoned: the thread skips what it has left of it."""
        self._last_batch = 0  # the number of the batch holding its last chunk (0: none)
        self._finished = False

    async def update(self, chunk: Buffer) -> None:
        """Hand ``chunk`` over: waits only when the process is over its budget."""
        thread = _hash_thread()
        self._last_batch = thread.add(self, chunk)
        if thread.batch_bytes + thread.sent_bytes - thread.hashed_bytes > BUDGET_BYTES:
            await thread.barrier()

    def finish(self) -> None:
        """No chunk comes after this: the digest is :meth:`result` once :func:`all_hashed`
        has returned (and :meth:`release` does nothing)."""
        self._finished = True

    async def hexdigest(self) -> str:
        """The digest of every chunk given, once they are hashed (no chunk may follow)."""
        await all_hashed()
        return self.result()

    def result(self) -> str:
        """The hex digest, once every chunk given is hashed (after :func:`all_hashed`)."""
        assert _thread is None or _thread.hashed_batches >= self._last_batch, "all_hashed() first"
        if self.failure is not None:
            raise self.failure
        return self.digest.hexdigest()

    def release(self) -> None:
        """Forget the file (it was refused, or its client went away): what is left of it is
        not hashed, only let go of as its batch is. Nothing after :meth:`finish`."""
        self.released = not self._finished
