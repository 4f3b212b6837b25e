"""Storage in a local folder.

Layout::

    UPLOAD_FOLDER/
        photo.jpg, photo-1.jpg, …      published files (served under UPLOAD_URL_PATH)
        .tus/                           resumable uploads in progress (see :mod:`.local_resumable`)
        .incoming/                      never served: dot-paths are hidden from the static route
            <process id>/               one per running process, flock-ed while it lives
                .lock
                <batch id>.<n>          temporary files of one request (no folder per request:
                                        a mkdir and rmdir per upload doubled the metadata work)
                <batch id>.journal      a batch of several files published, not sealed yet
                trash-<batch id>-<n>/   files taken out of the folder, removed in the background

Temporary files live on the same filesystem as the folder (a sandboxed service may write only
there), so publishing is an ``os.link`` per file — atomic, and failing with ``EEXIST`` instead
of overwriting — followed by one directory ``fsync`` per batch. The temporary files stay until
the caller, its records committed, **seals** the batch: a process that dies before that leaves
its ``.incoming/<process id>`` behind unlocked, and the next process to start rolls back what
it had published but not sealed, then removes the directory (see
:mod:`clustr_aio.storage.journal`). Files a batch does not keep after all (refused,
duplicates) are never unlinked while a request waits: not published, or renamed into a trash
folder if they were, and removed in the background; so are the published files of a batch
discarded after its publish.

Blocking calls run on a dedicated thread pool, so the event loop does not wait on the disk,
with two exceptions below, both without FSYNC only. File data is handed to the pool in blocks
of ``write_block`` bytes (``os.writev`` of the received chunks, no joining), and one block per
file may be in flight while the next one is received. A file smaller than a block that is not
its batch's last is, without FSYNC, created, written and closed by the loop itself as the next
file starts: a few syscalls into the page cache, cheaper than the thread round trip they would
take (many small files in one request: bench B0). A batch's last file, if none of its bytes
went to the pool (a file smaller than a block), is created, written and closed by the
publish's own pool call, which the links need anyway. Without FSYNC, a batch of that one file
only is published on the loop itself (create, one ``writev`` into the page cache, link): the
round trip to the pool and back cost more CPU than those calls (bench C0, issue 16: 2.86
against 2.49 ms per request, measured beside nginx; an earlier measurement had found the
loop's create dearer than the hop). So a small upload costs no thread round trip: none for
its seal (without FSYNC), and none for the free-space check before its body, answered from a
reading under a second old (:meth:`LocalStorage.ensure_room`). Those loop writes are timed: a
few in a row that the kernel held up (dirty pages ahead of the disk) send the next ones to the
pool for a while (:meth:`LocalStorage.loop_write_took`), where a stall holds one thread, not
every connection.
Memory: 300 uploads that sent 1 MB each and stalled held 300 MB of RAM, a block each. So the
bytes received and not yet written, by all uploads together, are kept under ``memory_budget``:
a write that finds it exceeded first hands its own file's bytes to the pool, then waits until
writes have brought the total back under the budget (meanwhile its upload reads no more, so
aiohttp stops reading its socket, and TCP holds the client back). And a block that is still
not full ``idle_flush`` seconds after its first bytes came is written as it is, so an upload
that stalls holds nothing for long.

Free space: with ``min_free_space`` set, a write that runs into ``ENOSPC``/``EDQUOT`` is not the
first sign of a full disk. The pool threads re-check free space (one ``statvfs``) each time
``space_check_every`` more bytes have been written, by all uploads together, and once more
before a batch is published; an upload that would leave less than the reserve fails with
:class:`InsufficientStorage` and its files are removed like those of any failed upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clustr_aio.domain.errors import InsufficientStorage, ServerBusy
from clustr_aio.domain.names import numbered
from clustr_aio.storage import journal
from clustr_aio.storage.base import Buffer, OnDisk
from clustr_aio.storage.journal import fsync_directory
from clustr_aio.storage.scan import names_in_chunks

if TYPE_CHECKING:
    from clustr_aio.storage.local_resumable import LocalResumableStore

log = logging.getLogger("clustr_aio")

INCOMING_DIR = ".incoming"
_LOCK_FILE = ".lock"
_TRASH_PREFIX = "trash-"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
_NO_DESCRIPTOR_LEFT = "the server has too many files open; retry shortly"
_MAX_NAME_ATTEMPTS = 100_000
_LOCKLESS_GRACE_SECONDS = 60
_DEVICE_FULL = "not enough space left on the storage device"
_RESERVE_REACHED = "not enough storage space left for this upload; try again later"
# How long a free-space reading may answer the check before a body is read, on the loop and
# without a pool round trip (less what was written since it: it errs on the safe side). Every
# publish reads the real figure on its own thread and so refreshes it; a reading older than
# half of this is refreshed in the background. The reserve itself is held by the pool's
# checks as bytes are written and before every publish, which never use the reading.
_SPACE_READING_SECONDS = 1.0
# Without FSYNC small files are written on the loop's own thread: a copy into the page cache,
# well under a millisecond for a block. Until the disk falls behind and the kernel throttles
# writers (balance_dirty_pages sleeps a writer up to 200 ms a call): on the loop that stalls
# every connection, on the pool one thread. A loop write slower than this sends the writes of
# the next _LOOP_WRITES_PAUSE seconds to the pool. Only _SLOW_LOOP_WRITES_IN_A_ROW of them:
# on a busy machine a write is now and then 10 ms slower because the scheduler ran something
# else (bench C0 on a loaded machine saw one in most 8 s runs), while a throttled writer is
# paused at nearly every write.
_SLOW_LOOP_WRITE_SECONDS = 0.01
_SLOW_LOOP_WRITES_IN_A_ROW = 3
_LOOP_WRITES_PAUSE = 10.0
_T = TypeVar("_T")


class LocalStorage:
    """Stores published files in ``folder``. Open with :meth:`open`, release with :meth:`close`."""

    def __init__(
        self,
        folder: Path,
        *,
        fsync: bool = True,
        io_threads: int = 16,
        write_block: int = 1024 * 1024,
        files_in_flight: int = 8,
        idle_flush: float = 0.25,
        memory_budget: int = 16 * 1024 * 1024,
        min_free_space: int = 0,
        space_check_every: int | None = None,
    ) -> None:
        self.folder = folder
        self._folder_text = os.fspath(folder)
        self.fsync = fsync
        self.write_block = write_block
        self.files_in_flight = files_in_flight
        self.idle_flush = idle_flush
        self.memory_budget = memory_budget
        self._held = 0  # bytes received and not yet written, every file together
        self._below_budget = asyncio.Event()
        self.min_free_space = min_free_space
        # The reserve can be overrun by about one interval (plus the blocks in flight), so the
        # interval is a quarter of the reserve, at least a write block, at most 8 MiB: one
        # statvfs per 8 MiB costs nothing next to writing them, even on a network filesystem.
        self.space_check_every = space_check_every or min(
            max(min_free_space // 4, write_block), 8 * 1024 * 1024
        )
        self._unchecked_bytes = 0
        self._unchecked_lock = threading.Lock()  # written to by several pool threads
        # The last statvfs: (time.monotonic(), free bytes), and the bytes written since; set by
        # the pool threads, read on the loop (see ensure_room).
        self._space_reading: tuple[float, int] | None = None
        self._written_since_reading = 0
        self._refreshing_reading = False
        self._io_threads = io_threads
        self._executor: ThreadPoolExecutor | None = None
        self._own_dir: Path | None = None
        self._lock_fd: int | None = None
        self._restoring = threading.Lock()  # see _restore_own_dir_sync
        self._loop_writes_resume_at = 0.0  # see loop_write_took
        self._slow_loop_writes = 0  # in a row
        # Where to start probing for a free numbered name, per desired name. Only a hint: the
        # atomic os.link decides, so a stale hint can cost a few probes but never a collision.
        self._next_number: dict[str, int] = {}
        self._numbers_lock = threading.Lock()  # the pool threads take numbers at once
        # Batch ids: unique within this process's own directory, which is unique itself.
        self._batch_numbers = itertools.count()
        self.pause: journal.PausePoint | None = None  # tests only: see journal.pause_points
        self._resumable: LocalResumableStore | None = None

    # -- reading ---------------------------------------------------------------------------

    async def locate(self, name: str) -> OnDisk | None:
        """The published file ``name``: one path segment right in the folder. Dot-names are
        never stored (temporary files live in ``.incoming``), so they are never located."""
        path = self.path_of(name)
        return None if path is None else OnDisk(path)

    def path_of(self, name: str) -> str | None:
        """:meth:`locate`'s answer, from the loop without awaiting (for
        :mod:`clustr_aio.web.hot_files`): where the published file ``name`` would be."""
        if not name or name[0] == "." or "/" in name or "\0" in name:
            return None
        return os.path.join(self._folder_text, name)

    def names(self, chunk: int) -> AsyncIterator[list[str]]:
        """Every published file: the folder's regular files but dot-names."""
        return names_in_chunks(self.folder, chunk, _is_published)

    async def existing(self, names: Sequence[str]) -> set[str]:
        return await self.run(self._existing_sync, names)

    def _existing_sync(self, names: Sequence[str]) -> set[str]:
        found = set()
        for name in names:
            path = self.path_of(name)
            with contextlib.suppress(OSError):  # gone, or a name no file can have
                if path is not None and stat.S_ISREG(os.lstat(path).st_mode):
                    found.add(name)
        return found

    async def delete(self, names: Sequence[str]) -> None:
        """Take the published files ``names`` out of the folder, in one pool call and (with
        FSYNC) one flush of it, and free them in the background (see :func:`_take_out`)."""
        plain = [name for name in dict.fromkeys(names) if self.path_of(name) is not None]
        if plain:
            self.remove_later([await self.run(self._delete_sync, plain)])

    def _delete_sync(self, names: list[str]) -> Path:
        assert self._own_dir is not None, "LocalStorage used before open()"
        trash = self._own_dir / f"{_TRASH_PREFIX}{next(self._batch_numbers):x}-deleted"
        _take_out(self, trash, dict(enumerate(names)))
        with self._numbers_lock:
            self._next_number.clear()  # a freed name is the first to be taken again
        return trash

    def resumable_uploads(self) -> LocalResumableStore:
        """Resumable (tus) uploads, kept in ``.tus`` beside the stored files (never served)."""
        from clustr_aio.storage.local_resumable import TUS_DIR, LocalResumableStore  # (a cycle)

        if self._resumable is None:
            self._resumable = LocalResumableStore(self.folder / TUS_DIR, self.run, fsync=self.fsync)
        return self._resumable

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(self._io_threads, thread_name_prefix="clustr-io")
        self.pause = journal.pause_points(os.environ)
        self._own_dir, self._lock_fd = await self.run(self._open_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self.run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _open_sync(self) -> tuple[Path, int]:
        incoming = self.folder / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        own = incoming / uuid.uuid4().hex
        own.mkdir()
        lock_fd = _lock_own_dir(own)
        sweep_stale_incoming(self.folder)
        return own, lock_fd

    def create_temporary(self, path: str | Path) -> int:
        """Create the temporary file ``path`` in the process's own directory, open for writing
        (see :meth:`in_own_dir`)."""
        return self.in_own_dir(_create, path)

    def in_own_dir(self, make: Callable[[str | Path], _T], path: str | Path) -> _T:
        """``make(path)``, which creates ``path`` in the process's own directory (a file, a
        folder). An operator who cleans up ``.incoming`` (or the own directory) under a running
        server would otherwise fail every upload and delete with ENOENT until a restart; the
        directory is made again, locked as at :meth:`open`, and ``make`` tried once more. The
        upload folder itself is never made again (an unmounted volume must fail uploads, not
        fill the disk under it). A batch whose earlier files went with the directory still
        fails, at its publish."""
        try:
            return make(path)
        except FileNotFoundError:
            if not self._restore_own_dir_sync():
                raise
            return make(path)

    def _restore_own_dir_sync(self) -> bool:
        """Make the own directory again if it is gone and the folder is there; whether the
        caller may try again. Pool threads and the loop may get here at once."""
        with self._restoring:
            own = self._own_dir
            if own is None or not self.folder.is_dir():
                return False
            if own.is_dir():
                return True  # another thread was first
            own.parent.mkdir(exist_ok=True)
            own.mkdir()
            old_lock, self._lock_fd = self._lock_fd, _lock_own_dir(own)
            if old_lock is not None:
                os.close(old_lock)  # its file went with the directory
            log.warning("%s was removed while the server ran; made it again", own)
            return True

    def _close_sync(self) -> None:
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._own_dir = self._lock_fd = None

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run a blocking call on the storage's thread pool."""
        return await self.start(fn, *args)

    def start(self, fn: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        """Start a blocking call on the pool: its future, with no task around it (one task
        fewer per upload than ``ensure_future(run(...))``)."""
        assert self._executor is not None, "LocalStorage used before open()"
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def writes_on_loop(self) -> bool:
        """Whether a small file may be written on the loop's own thread now: without FSYNC
        (only the page cache to wait for), unless such a write was slow lately."""
        return not self.fsync and time.monotonic() >= self._loop_writes_resume_at

    def loop_write_took(self, seconds: float) -> None:
        """A write made on the loop took ``seconds``: a few slow ones in a row (the kernel
        throttling a writer whose dirty pages outran the disk) send the next ones to the pool
        for a while."""
        if seconds < _SLOW_LOOP_WRITE_SECONDS:
            self._slow_loop_writes = 0
            return
        self._slow_loop_writes += 1
        if self._slow_loop_writes < _SLOW_LOOP_WRITES_IN_A_ROW:
            return
        self._slow_loop_writes = 0
        self._loop_writes_resume_at = time.monotonic() + _LOOP_WRITES_PAUSE
        log.warning(
            "%d writes in a row on the event loop took over %.0f ms, the last %.0f ms (the"
            " disk is behind the page cache); writes go to the I/O threads for %.0f s",
            _SLOW_LOOP_WRITES_IN_A_ROW,
            _SLOW_LOOP_WRITE_SECONDS * 1000,
            seconds * 1000,
            _LOOP_WRITES_PAUSE,
        )

    # -- Storage ---------------------------------------------------------------------------

    def batch(self) -> LocalBatch:
        assert self._own_dir is not None, "LocalStorage used before open()"
        return LocalBatch(self, self._own_dir, f"{next(self._batch_numbers):x}")

    async def free_space(self) -> int:
        return await self.run(self._free_space_sync)

    def _free_space_sync(self) -> int:
        stats = os.statvfs(self.folder)
        free: int = stats.f_bavail * stats.f_frsize
        with self._unchecked_lock:
            self._space_reading = (time.monotonic(), free)
            self._written_since_reading = 0
        return free

    async def ensure_room(self, incoming: int | None = None) -> None:
        """Before a body is read: a reading under :data:`_SPACE_READING_SECONDS` old that
        leaves room answers on the loop; one that does not, or none, is checked against the
        real figure on the pool (someone may have freed space since)."""
        if self.min_free_space <= 0 and not incoming:
            return
        reading = self._space_reading
        if reading is not None:
            age = time.monotonic() - reading[0]
            free = reading[1] - self._written_since_reading - (incoming or 0)
            if age < _SPACE_READING_SECONDS and free >= self.min_free_space:
                if age >= _SPACE_READING_SECONDS / 2:
                    self._refresh_reading()
                return
        await self.run(self._ensure_room_sync, incoming or 0)

    def _refresh_reading(self) -> None:
        """A new reading on the pool, unawaited (one at a time): off the request path."""
        if self._refreshing_reading or self._executor is None:
            return
        self._refreshing_reading = True
        done = self._executor.submit(self._free_space_sync)
        done.add_done_callback(self._reading_refreshed)

    def _reading_refreshed(self, done: Future[int]) -> None:
        # On the pool thread; an error (the folder gone) is for the next real check to raise.
        self._refreshing_reading = False

    def _ensure_room_sync(self, incoming: int) -> None:
        if self._free_space_sync() - incoming >= self.min_free_space:
            return
        if incoming:
            raise InsufficientStorage(
                f"not enough storage space left for an upload of {incoming} bytes; try again later"
            )
        raise InsufficientStorage(_RESERVE_REACHED)

    def count_written(self, size: int) -> None:
        """After every ``space_check_every`` bytes written, check that the reserve is still
        free. Blocking: called on the pool threads, never on the event loop."""
        with self._unchecked_lock:
            self._written_since_reading += size  # the loop's reading is that much less true
            if self.min_free_space <= 0:
                return
            self._unchecked_bytes += size
            if self._unchecked_bytes < self.space_check_every:
                return
            self._unchecked_bytes = 0
        self._ensure_room_sync(0)

    def hold(self, size: int) -> None:
        self._held += size

    def release(self, size: int) -> None:
        self._held -= size
        if self._held <= self.memory_budget:
            self._below_budget.set()

    @property
    def over_budget(self) -> bool:
        return self._held > self.memory_budget

    async def wait_below_budget(self) -> None:
        while self._held > self.memory_budget:
            self._below_budget.clear()
            await self._below_budget.wait()

    async def check_writable(self) -> None:
        await self.run(self._check_writable_sync)

    def _check_writable_sync(self) -> None:
        """Do what an upload does, with an empty file: create it among the temporary files and
        link it into the folder (under a dot-name, which is never served), then remove both."""
        assert self._own_dir is not None, "LocalStorage used before open()"
        name = f".ready-{uuid.uuid4().hex}"
        probe = self._own_dir / name
        os.close(self.create_temporary(probe))
        try:
            os.link(probe, self.folder / name)
            os.unlink(self.folder / name)
        finally:
            os.unlink(probe)

    def remove_later(self, paths: Sequence[str | Path]) -> None:
        """Remove files and folders of the process's own directory on a pool thread, unawaited
        (``close`` waits): what a discarded or trimmed batch leaves behind."""
        assert self._executor is not None, "LocalStorage used before open()"
        self._executor.submit(_remove_quietly, list(paths))

    def link_unique(self, source: str | Path, desired: str) -> str:
        """Hard-link ``source`` into the folder as ``desired`` or its first free numbered
        alternative; atomic and never overwriting. Blocking."""
        return self._place_unique(os.link, os.fspath(source), desired)

    def _place_unique(self, place: Callable[[str, str], None], source: str, desired: str) -> str:
        for _ in range(_MAX_NAME_ATTEMPTS):
            candidate = numbered(desired, self._take_number(desired))
            try:
                place(source, os.path.join(self._folder_text, candidate))
            except FileExistsError:
                continue
            return candidate
        raise FileExistsError(errno.EEXIST, f"no free name found for {desired!r}")

    def _take_number(self, desired: str) -> int:
        """The number to try next for ``desired``, taken before its link is tried: publishes
        of the same name on other pool threads at the same time try the numbers after it,
        instead of colliding with it (C's 16 uploads of one name at a time: a failed link
        and an exception per upload). A number whose link fails otherwise is skipped."""
        with self._numbers_lock:
            n = self._next_number.get(desired, 0)
            self._next_number[desired] = n + 1
        return n


class _Withdrawn(Exception):
    """The publish's caller was cancelled before the commit: take the links back."""


class LocalBatch:
    """The temporary files of one request, ``<batch id>.<n>`` in the process's directory."""

    def __init__(self, storage: LocalStorage, directory: Path, batch_id: str) -> None:
        self._storage = storage
        self._dir = directory
        self._prefix = os.path.join(directory, f"{batch_id}.")
        """Of its temporary files' paths: plain strings, not ``Path`` objects (making,
        joining and converting those was 2 % of bench B0's server CPU, py-spy)."""
        self._id = batch_id
        self._files: list[LocalFile] = []
        self._closing: deque[asyncio.Future[None]] = deque()
        self._publishing: asyncio.Future[list[str]] | None = None
        self._left_out: set[int] = set()
        self._names: dict[int, str] = {}
        """Slot -> name in the folder, of the files published and not withdrawn since."""
        self._linked: list[int] = []
        """The slots whose temporary files are still links of published files (until the
        seal removes them)."""
        self._journal: Path | None = None
        self._sealed = False
        self._trash_count = itertools.count()
        self._withdrawn = False  # set on the loop, read by the publishing thread before commit
        self.deferred: LocalFile | None = None
        """A closed file none of whose bytes were handed to the pool yet: the publish writes
        it, in the same thread hop (see :meth:`LocalFile.close`)."""

    def add_file(self, desired_name: str) -> LocalFile:
        if self.deferred is not None:
            self.deferred.write_deferred()  # only the batch's last file waits for the publish
        file = LocalFile(self, f"{self._prefix}{len(self._files)}", desired_name)
        self._files.append(file)
        return file

    async def _closed(self, last_write: asyncio.Future[None]) -> None:
        """Let a file's last write and fsync finish in the background while the next file is
        received (that is what makes FSYNC=true cheap), with a bound on how many are pending."""
        self._closing.append(last_write)
        while len(self._closing) > self._storage.files_in_flight:
            await self._closing.popleft()

    async def leave_out(self, slots: Collection[int]) -> None:
        """Files not to store after all (refused, duplicates). Before the publish, they are
        not linked; after it (before the seal), they are renamed out of the folder. Either
        way their bytes are removed in the background: freeing an inode costs this machine's
        ext4 0.7 ms, 350 ms for 500 duplicates, which no answer should wait for."""
        new = sorted(set(slots) - self._left_out)
        self._left_out.update(new)
        names = {n: self._names.pop(n) for n in new if n in self._names}
        if not names:
            return  # not published (yet): the publish leaves them out
        self._linked = [n for n in self._linked if n not in names]
        trash = await self._storage.run(self._withdraw_sync, names)
        self._storage.remove_later([trash, *(self._files[n].path for n in names)])

    async def publish(self) -> list[str]:
        last = self.deferred
        if last is not None:
            last.stop_flushing()
            self.deferred = None
            if len(self._files) - 1 in self._left_out:  # the deferred file is the last one
                last.drop_buffers()  # never written: nothing to remove either
                last = None
        while self._closing:
            await self._closing.popleft()
        if last is not None and self._publishes_on_loop(last):
            return self._publish_on_loop(last)
        # A future of its own, so that a discard() after a cancelled publish can wait for the
        # links the pool thread is still making, and take them back.
        held = last.take_buffers() if last is not None else 0  # no await until submitted
        self._publishing = self._storage.start(self._publish_sync, last)
        if held:
            self._publishing.add_done_callback(lambda _: self._storage.release(held))
        # Shielded: cancelling the caller must not cancel this future while the thread links on,
        # or discard() would not wait for the thread and could miss names it publishes later.
        try:
            names = await asyncio.shield(self._publishing)
        except asyncio.CancelledError:
            self._withdrawn = True  # the thread takes its links back instead of committing
            raise
        if self._left_out:
            self._storage.remove_later([self._files[n].path for n in sorted(self._left_out)])
        return names

    def _publishes_on_loop(self, last: LocalFile) -> bool:
        """Whether the publish of a batch whose only file is deferred (``last``) runs on the
        loop: when that file's last write would (:attr:`LocalFile.writes_on_loop`), its
        create, one ``writev`` into the page cache and its link cost less CPU than the round
        trip to the pool and back (C0, issue 16), and no flush can hold the loop."""
        return (
            len(self._files) == 1
            and not self._left_out
            and self._storage.pause is None
            and last.writes_on_loop
        )

    def _publish_on_loop(self, last: LocalFile) -> list[str]:
        """:meth:`_publish_sync` for a batch of one deferred file, on the loop: nothing to
        await, so nothing can cancel it half-way (``_withdrawn`` stays False)."""
        held = last.take_buffers()
        started = time.perf_counter()
        try:
            return self._publish_sync(last)
        finally:
            self._storage.loop_write_took(time.perf_counter() - started)
            self._storage.release(held)

    def _publish_sync(self, last: LocalFile | None) -> list[str]:
        """Write the deferred last file, if any; then journal, link, flush (see
        :mod:`clustr_aio.storage.journal`); the seal comes once the caller has committed. A
        batch of one file needs no journal: its temporary file, still linked, is one."""
        storage = self._storage
        pause = storage.pause
        published: list[str] = []
        journal_file: Path | None = None
        if last is not None:
            buffers, last.held_buffers = last.held_buffers, []
            last.write_sync(buffers, last=True)
        slots = [n for n in range(len(self._files)) if n not in self._left_out]
        try:
            if storage.min_free_space > 0:
                storage._ensure_room_sync(0)  # the last bytes written may have crossed the reserve
            if slots and len(self._files) > 1:
                planned = [(self._files[n].path, self._files[n].desired_name) for n in slots]
                journal_file = journal.begin(self._dir, self._id, planned, durable=storage.fsync)
            for n in slots:
                if pause is not None:
                    pause(f"link {len(published)}")
                file = self._files[n]
                published.append(storage.link_unique(file.path, file.desired_name))
            if storage.fsync and published:
                fsync_directory(storage.folder)
            if pause is not None:
                pause("linked")
            if self._withdrawn:
                raise _Withdrawn()
        except BaseException as error:
            self._take_back(published, journal_file)
            if isinstance(error, OSError) and error.errno in _NO_SPACE:
                # A directory that needs one more block for the new names.
                raise InsufficientStorage(_DEVICE_FULL) from None
            raise
        self._journal = journal_file
        self._linked = slots
        self._names = dict(zip(slots, published, strict=True))
        return published

    def _take_back(self, published: list[str], journal_file: Path | None) -> None:
        """Unlink what a publish that failed had linked, then (and only then: a crash in
        between leaves the journal for the next start) its journal."""
        storage = self._storage
        for name in published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(storage.folder / name)
        if journal_file is not None:
            if storage.fsync and published:
                fsync_directory(storage.folder)
            journal.abandon(journal_file, durable=storage.fsync)

    async def seal(self) -> None:
        """The caller has committed: make the publish final (see
        :mod:`clustr_aio.storage.journal`). Until then a crash rolls it back."""
        if self._sealed:
            return
        storage = self._storage
        if self._journal is None and not storage.fsync and storage.pause is None:
            # A batch of one file (or none), nothing to flush: the seal is one unlink of a
            # second name, which frees no inode; cheaper here than a round trip to the pool.
            self._seal_sync()
        elif self._linked or self._journal is not None:
            await storage.run(self._seal_sync)
        self._sealed = True

    def _seal_sync(self) -> None:
        storage = self._storage
        if storage.pause is not None:
            storage.pause("seal")
        marker = None
        if self._journal is not None:
            marker = journal.seal(self._journal, durable=storage.fsync)
            self._journal = None
        for n in self._linked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._files[n].path)  # a second name: no inode is freed
        self._linked = []
        if marker is not None:
            journal.forget(marker, durable=storage.fsync)
        elif storage.fsync:
            fsync_directory(self._dir)  # a batch of one file: that removal was its seal
        if storage.pause is not None:
            storage.pause("sealed")

    async def discard(self) -> None:
        if self._sealed:
            return  # final: the caller committed it
        self.deferred = None
        for file in self._files:
            file.stop_flushing()  # no write may start after the files are removed
        # Threads cannot be cancelled: wait until every write, and a publish whose caller was
        # cancelled, have stopped touching the files.
        pending: list[asyncio.Future[Any]] = [f.in_flight for f in self._files if f.in_flight]
        if self._publishing is not None:
            pending.append(self._publishing)
        await asyncio.gather(*pending, return_exceptions=True)
        for file in self._files:
            file.drop_buffers()
        self._closing.clear()
        trash = await self._storage.run(self._discard_sync)
        if trash is not None:  # emptied in the background: the client need not wait for it
            self._storage.remove_later([trash])

    def _discard_sync(self) -> Path | None:
        """Take the batch's published files out of the folder, into a trash folder returned
        for the background; remove the temporary files (of published files, a second name
        only), then the journal."""
        for file in self._files:
            file.close_fd()
        names, self._names = self._names, {}
        trash = self._withdraw_sync(names) if names else None
        for file in self._files:
            with contextlib.suppress(FileNotFoundError):  # never created: no data came
                os.unlink(file.path)
        self._linked = []
        if self._journal is not None:
            journal.abandon(self._journal, durable=False)  # nothing of it is left to roll back
            self._journal = None
        return trash

    def _withdraw_sync(self, names: dict[int, str]) -> Path:
        """Take published files out of the folder (:func:`_take_out`); their trash folder."""
        trash = self._dir / f"{_TRASH_PREFIX}{self._id}-{next(self._trash_count)}"
        _take_out(self._storage, trash, names)
        return trash


def _take_out(storage: LocalStorage, trash: Path, names: dict[int, str]) -> None:
    """Move published files (slot: name) out of the folder into the new folder ``trash`` in the
    process's own directory (never served, swept after a crash), for the caller to remove in
    the background; names already gone are passed over. Unlinking them would free their
    inodes, which costs this machine's ext4 0.7 ms a file: 10,000 files held the answer for
    7-14 s; a rename takes a file out for a fraction of that."""
    storage.in_own_dir(os.mkdir, trash)
    for n, name in names.items():
        with contextlib.suppress(FileNotFoundError):
            os.rename(storage.folder / name, trash / str(n))
    if storage.fsync:
        fsync_directory(storage.folder)


class LocalFile:
    """One temporary file. Data is collected into blocks and written by the thread pool."""

    def __init__(self, batch: LocalBatch, path: str, desired_name: str) -> None:
        self.path = path
        self.desired_name = desired_name
        self.in_flight: asyncio.Future[None] | None = None
        self._batch = batch
        self._storage = batch._storage
        self._fd: int | None = None
        self._buffers: list[Buffer] = []
        self._buffered = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing = True  # until the last block is submitted, or the batch discarded
        self.held_buffers: list[Buffer] = []
        """The deferred file's bytes, taken by the publish (see :meth:`close`)."""
        self._patches: list[tuple[int, bytes]] = []
        self._adopted: tuple[str, int] | None = None

    @property
    def writes_on_loop(self) -> bool:
        """Whether its last write, if the file is smaller than a block, is made on the loop's
        own thread: when the storage's are (:attr:`LocalStorage.writes_on_loop`), and not for
        an adopted file, whose adopted bytes (a tus upload's, of any size) that write copies in."""
        return self._storage.writes_on_loop and self._adopted is None

    def adopt(self, source: str, length: int) -> None:
        """Its first ``length`` bytes are ``source``'s (:class:`Adopting`): the bytes written go
        after them, and the last write copies them in (in the kernel), or, when they are the
        whole file, makes the file a hard link of ``source``."""
        self._adopted = (source, length)

    def patch(self, offset: int, data: bytes) -> None:
        """Applied by the last write, before its fsync (:class:`HeadPatching`)."""
        self._patches.append((offset, data))

    async def write(self, data: Buffer) -> None:
        storage = self._storage
        self._buffers.append(data)
        self._buffered += len(data)
        storage.hold(len(data))
        if self._buffered >= storage.write_block:
            await self._submit(last=False)
        elif storage.over_budget:
            await self._submit(last=False)  # this file's part of the excess goes first
        elif self._flush_timer is None and self._flushing:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._storage.idle_flush, self._flush_idle)

    async def close(self) -> None:
        self.stop_flushing()
        storage = self._storage
        if self.in_flight is None and not storage.over_budget:
            # Nothing handed to the pool yet (a file smaller than a block): let the publish
            # create, write and close it in its own thread hop, one round trip instead of
            # two, unless another file follows or it waits longer than a partial block would.
            self._batch.deferred = self
            self._flush_timer = asyncio.get_running_loop().call_later(
                storage.idle_flush, self.write_deferred
            )
            return
        await self._submit(last=True)
        assert self.in_flight is not None
        await self._batch._closed(self.in_flight)

    def write_deferred(self) -> None:
        """Write the deferred file after all, without waiting: another file follows it, or it
        waited ``idle_flush``. With FSYNC on the pool; without, right here (see
        :meth:`_write_here`)."""
        self.stop_flushing()
        if self._batch.deferred is not self:
            return
        self._batch.deferred = None
        if self.writes_on_loop:
            self._write_here()
        else:
            self._start_write(last=True)
        assert self.in_flight is not None
        self._batch._closing.append(self.in_flight)  # the publish waits for it

    def _write_here(self) -> None:
        """Create, write and close the file on the loop's own thread: a file smaller than a
        block, with no fsync to wait for, is a few syscalls into the page cache, and handing
        it to the pool cost more than writing it (the GIL passed back and forth around each
        of them, the futures and wake-ups: bench B0, 500 files of 500 KB, 0.71 s of server
        CPU by the pool, 0.54 s here, wall time lower too). A failure is kept for the
        publish to raise, as a pool write's would be."""
        buffers, size = self._buffers, self._buffered
        self._buffers, self._buffered = [], 0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        try:
            self.write_sync(buffers, True)
        except Exception as error:  # the publish, which awaits it, raises it
            done.set_exception(error)
        else:
            done.set_result(None)
        finally:
            self._storage.loop_write_took(time.perf_counter() - started)
            self._storage.release(size)
        self.in_flight = done

    def take_buffers(self) -> int:
        """Move the deferred bytes to :attr:`held_buffers` for the publishing thread; returns
        their size, to release once it is done."""
        self.held_buffers, self._buffers = self._buffers, []
        size, self._buffered = self._buffered, 0
        return size

    def stop_flushing(self) -> None:
        self._flushing = False
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def _flush_idle(self) -> None:
        """Timer: write out what has waited ``idle_flush`` seconds for its block to fill."""
        self._flush_timer = None
        if not self._flushing or not self._buffers:
            return
        pending = self.in_flight
        if pending is not None and not pending.done():  # the disk is behind: later
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._storage.idle_flush, self._flush_idle
            )
            return
        if pending is not None and (pending.cancelled() or pending.exception() is not None):
            return  # the next write() or close() raises it
        self._start_write(last=False)

    async def _submit(self, *, last: bool) -> None:
        # One block in flight per file bounds memory; the idle flush may start one while this
        # waits for another, so wait until none is.
        while (pending := self.in_flight) is not None:
            await pending
            if pending is self.in_flight:
                break
        self._start_write(last=last)
        if self._storage.over_budget:
            await self._storage.wait_below_budget()

    def _start_write(self, *, last: bool) -> None:
        buffers, size = self._buffers, self._buffered
        self._buffers, self._buffered = [], 0
        loop = asyncio.get_running_loop()
        executor = self._storage._executor
        self.in_flight = loop.run_in_executor(executor, self.write_sync, buffers, last)
        self.in_flight.add_done_callback(lambda _: self._storage.release(size))

    def drop_buffers(self) -> None:
        """Forget what was never handed to the pool (the batch is being discarded)."""
        size, self._buffers, self._buffered = self._buffered, [], 0
        self._storage.release(size)

    def write_sync(self, buffers: list[Buffer], last: bool) -> None:
        adopted = self._adopted
        try:
            if self._fd is None:
                if adopted is not None and last and self._is_whole(adopted, buffers):
                    try:
                        self._link_sync(adopted[0])
                        return
                    except OSError as error:  # no hard links here (EXDEV, EPERM…): a copy
                        if error.errno in _NO_SPACE or error.errno in _NO_DESCRIPTORS:
                            raise
                self._fd = self._storage.create_temporary(self.path)
                if adopted is not None:
                    os.lseek(self._fd, adopted[1], os.SEEK_SET)
            write_all(self._fd, buffers)
            if last:
                if adopted is not None:
                    _copy_start(adopted[0], self._fd, adopted[1])
                for offset, data in self._patches:
                    os.pwrite(self._fd, data, offset)
                if self._storage.fsync:
                    os.fsync(self._fd)
                self.close_fd()
        except OSError as error:
            if error.errno in _NO_SPACE:
                raise InsufficientStorage(_DEVICE_FULL) from None
            if error.errno in _NO_DESCRIPTORS:  # at RLIMIT_NOFILE: busy, not broken
                raise ServerBusy(_NO_DESCRIPTOR_LEFT) from None
            raise
        self._storage.count_written(sum(len(b) for b in buffers))

    def _is_whole(self, adopted: tuple[str, int], buffers: list[Buffer]) -> bool:
        source, length = adopted
        written = any(len(b) for b in buffers)
        return not written and not self._patches and os.stat(source).st_size == length

    def _link_sync(self, source: str) -> None:
        """The file is ``source`` itself: a second name (its bytes flushed first, with FSYNC)."""
        if self._storage.fsync:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.link(source, self.path)

    def close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _is_published(entry: os.DirEntry[str]) -> bool:
    return entry.name[0] != "." and entry.is_file(follow_symlinks=False)


def _create(path: str | Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _lock_own_dir(own: Path) -> int:
    """Give the new directory ``own`` its held lock file; the lock's descriptor.

    The file is locked before it is moved into place: a process sweeping at this very moment
    finds the directory either without a lock file (young: spared) or with a held one, never
    with a free lock it may take for a dead owner's. (The sweep skips plain files.)"""
    with placed_locked(own.parent / f"{own.name}{_LOCK_FILE}", own / _LOCK_FILE) as lock_fd:
        return lock_fd


@contextlib.contextmanager
def placed_locked(pending: Path, final: Path, *, flags: int = os.O_WRONLY) -> Iterator[int]:
    """A new file made at ``pending`` and flock-ed, its descriptor for the body to fill, then
    renamed to ``final``: whoever finds it at ``final`` finds it locked. On failure the
    descriptor is closed and ``pending`` removed; on success it stays open (it holds the lock)."""
    fd = os.open(pending, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield fd
        os.rename(pending, final)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pending)
        raise


def _copy_start(source: str, fd: int, length: int) -> None:
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        copy_start(src, fd, length)
    finally:
        os.close(src)


def copy_start(source: int, target: int, length: int) -> None:
    """The first ``length`` bytes of ``source`` to the start of ``target`` (copy_file_range:
    in the kernel, without passing through this process); file positions are not moved."""
    done = 0
    while done < length:
        copied = os.copy_file_range(source, target, length - done, done, done)
        if not copied:
            raise OSError(errno.EIO, f"the file is shorter than {length} bytes")
        done += copied


def write_all(fd: int, buffers: Sequence[Buffer]) -> None:
    """``os.writev`` until every byte is written (writev may write less than asked)."""
    pending = [memoryview(b) for b in buffers if len(b)]
    while pending:
        written = os.writev(fd, pending[:1024])  # IOV_MAX is 1024 on Linux
        while pending and written >= len(pending[0]):
            written -= len(pending.pop(0))
        if written:
            pending[0] = pending[0][written:]


def sweep_stale_incoming(folder: Path) -> list[Path]:
    """Remove the temporary files of processes that are gone (crashed, killed), first rolling
    back the publish any of them was in the middle of. A live process holds an exclusive flock
    on its directory's ``.lock``; a dead one's lock is free."""
    removed = []
    incoming = folder / INCOMING_DIR
    for entry in incoming.iterdir() if incoming.is_dir() else ():
        if not entry.is_dir() or entry.is_symlink():
            continue
        try:
            fd = os.open(entry / _LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Between its mkdir and its flock a live process has no lock yet: leave young ones.
            # Another worker starting at the same time may have swept the folder meanwhile.
            try:
                if time.time() - entry.stat().st_mtime < _LOCKLESS_GRACE_SECONDS:
                    continue
            except FileNotFoundError:
                continue
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                if not entry.is_dir():
                    continue  # another starting worker held this lock and swept the folder
            try:
                journal.roll_back(entry, folder)
            except OSError as error:  # keep the evidence; the next start tries again
                log.error("cannot roll back the publishes journaled in %s: %s", entry, error)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _remove_quietly(paths: Sequence[str | Path]) -> None:
    """For the background: what fails is left to the sweep when the directory goes."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
