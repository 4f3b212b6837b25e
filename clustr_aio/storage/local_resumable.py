"""Resumable uploads in the local upload folder (:class:`~.resumable.ResumableStore`).

Layout::

    UPLOAD_FOLDER/.tus/            a dot-name: never served, never listed as a stored file
        <upload id>/
            info.json              the committed states (offset among them), one JSON line
                                   each: the last whole line is the upload's state
            data                   the bytes; flock-ed by the request appending to it (gone
                                   once the upload is published: they are the stored file's)
            final.<final id>       a final upload concatenates this (partial) one

The lock is an ``flock`` on ``data``, taken without waiting: one PATCH wins, any other (in this
process or another worker) is refused at once with 423. The kernel releases it when its file is
closed, which the request does when it ends however it ends, and when its process dies, so a
dead request never keeps an upload locked.

A commit is: the data file's bytes flushed (``fsync``, with FSYNC), then the new state appended
to ``info.json`` as one line and flushed. The state is the last whole line: a line a crash cut
short (no newline, or not JSON) never counts, so the one before it stands. Appending costs no
inode: a temporary file renamed over the old one did (its creation, and the old one's freeing:
0.3 ms of this machine's ext4 per commit), and a reader (a ``HEAD``) never waits for the
writer. Once the file passes :data:`_COMPACT_AT`, a commit writes it anew, with that state
alone (to a temporary file, then renamed over it). Bytes after the committed offset (a request
killed midway, a chunk whose checksum failed) are cut off the next time the upload is held, so
the file never holds what the offset does not vouch for.

A finished upload's stored file may be its ``data`` itself, a second name of the same inode
(:class:`~clustr_aio.storage.resumable.LocalData`: nothing written twice). So the store never
cuts or empties a ``data`` that has another name: it puts a copy of the committed bytes in its
place instead. A published upload's ``data`` is unlinked (its state committed first), which
frees nothing the stored file holds (a copy in its place cost a new inode); such an upload
changes no more, so holding it takes no lock (its ``HEAD``s, a ``DELETE`` or the sweeper only
read its state, or remove it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from clustr_aio.domain.errors import InsufficientStorage, NotFound, UploadLocked
from clustr_aio.storage.base import Buffer
from clustr_aio.storage.journal import fsync_directory
from clustr_aio.storage.local import copy_start, placed_locked, write_all
from clustr_aio.storage.resumable import Digest, UploadInfo

__all__ = ["TUS_DIR", "LocalResumableStore"]

TUS_DIR = ".tus"
_INFO = "info.json"
_DATA = "data"
_FINAL_PREFIX = "final."
_BLOCK = 512 * 1024
"""Bytes collected before they are handed to a thread to write (one block in flight). Half the
pipeline's: its live run (tus/live.py) holds the same chunks in its own blocks meanwhile, and
1 MiB here made TL's peak 2 MiB higher (65 MiB, against 63)."""
_READ_BLOCK = 256 * 1024
"""Blocks of a finished upload read back for the pipeline. Smaller than its own blocks: the page
cache delivers faster than the pipeline writes, and 1 MiB reads left the process 7 MiB larger
at its peak (a 1 GiB upload: 71 MiB instead of 64)."""
_COMPACT_AT = 64 * 1024
"""Bytes of ``info.json`` past which a commit writes it anew (a 2 GB upload in 5 MB chunks
appends 400 lines, which every ``HEAD`` would read)."""
_T = TypeVar("_T")
_A = TypeVar("_A")
Run = Callable[..., Awaitable[Any]]


class LocalResumableStore:
    """Uploads under ``folder`` (``UPLOAD_FOLDER/.tus``); blocking calls go through ``run``
    (the storage's thread pool)."""

    def __init__(self, folder: Path, run: Run, *, fsync: bool) -> None:
        self.folder = folder
        self._run = run
        self.fsync = fsync

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        result: _T = await self._run(fn, *args)
        return result

    def _dir(self, upload_id: str) -> Path:
        # Ids are the server's own (hex); anything else names no upload, never a path.
        if not upload_id or not upload_id.isalnum() or not upload_id.isascii():
            raise NotFound("no upload has this id")
        return self.folder / upload_id

    # -- ResumableStore --------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> None:
        await self._call(self._create_sync, info)

    def _create_sync(self, info: UploadInfo) -> None:
        os.close(self._make_sync(info)[0])

    def _create_held_sync(self, info: UploadInfo) -> LocalHeldUpload:
        fd, size = self._make_sync(info)
        return LocalHeldUpload(self, self._dir(info.id), fd, info, size)

    def _make_sync(self, info: UploadInfo) -> tuple[int, int]:
        """The upload's folder, data and first state; the data's descriptor, locked, and the
        state's size."""
        directory = self._dir(info.id)
        self.folder.mkdir(exist_ok=True)
        directory.mkdir()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(directory / _DATA, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no one else knows the id yet
            # Its first state, written in place: no reader knows the id yet either, and a
            # crash that cuts it short leaves a folder without a state, which the orphans'
            # sweep removes.
            size = _write_info(directory, info, durable=self.fsync, new=True)
            if self.fsync:
                fsync_directory(self.folder)
        except BaseException:
            os.close(fd)
            raise
        return fd, size

    async def get(self, upload_id: str) -> UploadInfo | None:
        try:
            directory = self._dir(upload_id)
        except NotFound:
            return None
        return await self._call(_read_info, directory)

    def data_path(self, upload_id: str) -> str:
        return str(self._dir(upload_id) / _DATA)

    def hold(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[LocalHeldUpload]:
        return self._holding(self._lock, upload_id)

    def create_held(
        self, info: UploadInfo
    ) -> contextlib.AbstractAsyncContextManager[LocalHeldUpload]:
        return self._holding(self._create_held, info)

    async def _lock(self, upload_id: str) -> LocalHeldUpload:
        """Without FSYNC, on the loop: an ``open``, a ``flock`` that never waits and a small
        read, cheaper there than the trip to a thread and back (which TB measured at 3-4 ms
        under load, the GIL handed over twice, for 0.2 ms of work); the rare cut of bytes no
        commit vouched for goes to a thread."""
        if self.fsync:
            return await self._call(self._lock_sync, upload_id)
        held = self._locked(upload_id)
        if held.untrusted:
            try:
                await self._call(held.cut_sync)
            except BaseException:
                held.close_sync()
                raise
        return held

    async def _create_held(self, info: UploadInfo) -> LocalHeldUpload:
        return await self._call(self._create_held_sync, info)

    @contextlib.asynccontextmanager
    async def _holding(
        self, take: Callable[[_A], Awaitable[LocalHeldUpload]], argument: _A
    ) -> AsyncIterator[LocalHeldUpload]:
        held = await take(argument)
        try:
            yield held
        finally:
            # On the loop, no trip to a thread: the descriptor's file still has its name (a
            # removal, or a published upload's release, closes it on the thread that unlinks
            # it), so closing it frees nothing; the flock goes with it.
            held.close_sync()

    def _lock_sync(self, upload_id: str) -> LocalHeldUpload:
        held = self._locked(upload_id)
        if held.untrusted:
            try:
                held.cut_sync()
            except BaseException:
                held.close_sync()
                raise
        return held

    def _locked(self, upload_id: str) -> LocalHeldUpload:
        """The upload, its data locked and its state read under the lock; ``untrusted`` if
        its data holds bytes past the committed offset (to cut before anything else)."""
        directory = self._dir(upload_id)
        try:
            fd = os.open(directory / _DATA, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            info, size = _read_state(directory)
            if info is None or info.file_id is None:
                raise NotFound("no upload has this id") from None
            return LocalHeldUpload(self, directory, None, info, size)  # published: no lock
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadLocked(
                    "another request is writing to this upload; retry once it has ended"
                ) from None
            info, size = _read_state(directory)  # read under the lock: removed meanwhile?
            if info is None:
                raise NotFound("no upload has this id")
            held = LocalHeldUpload(self, directory, fd, info, size)
            if info.file_id is None and os.fstat(fd).st_size > info.offset:
                held.untrusted = True  # bytes no commit vouched for
            else:
                os.lseek(fd, info.offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return held

    async def read(self, upload_id: str, size: int) -> AsyncIterator[Buffer]:
        directory = self._dir(upload_id)
        try:
            fd = await self._call(os.open, directory / _DATA, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("no upload has this id") from None
        try:
            left = size
            while left > 0:
                block = await self._call(os.read, fd, min(left, _READ_BLOCK))
                if not block:
                    raise OSError(errno.EIO, f"upload {upload_id} is shorter than {size} bytes")
                left -= len(block)
                yield block
        finally:
            os.close(fd)

    async def head(self, upload_id: str, size: int) -> bytes:
        return await self._call(self._head_sync, self._dir(upload_id), size)

    def _head_sync(self, directory: Path, size: int) -> bytes:
        info = _read_info(directory)
        if info is None:
            return b""
        try:
            with open(directory / _DATA, "rb") as file:
                return file.read(min(size, info.offset))
        except FileNotFoundError:  # published meanwhile: its bytes are the stored file's
            return b""

    async def refer(self, partial_id: str, final_id: str) -> None:
        marker = self._dir(partial_id) / f"{_FINAL_PREFIX}{self._dir(final_id).name}"
        await self._call(marker.touch)

    async def finals_of(self, partial_id: str) -> list[str]:
        return await self._call(self._finals_sync, self._dir(partial_id))

    def _finals_sync(self, directory: Path) -> list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [n[len(_FINAL_PREFIX) :] for n in names if n.startswith(_FINAL_PREFIX)]

    async def ids(self) -> list[str]:
        return await self._call(self._ids_sync)

    def _ids_sync(self) -> list[str]:
        try:
            with os.scandir(self.folder) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    async def sweep_orphans(self, older_than: float) -> int:
        return await self._call(self._sweep_orphans_sync, older_than)

    def _sweep_orphans_sync(self, older_than: float) -> int:
        removed = 0
        for upload_id in self._ids_sync():
            directory = self.folder / upload_id
            with contextlib.suppress(FileNotFoundError):
                if _read_info(directory) is not None or directory.stat().st_mtime >= older_than:
                    continue
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed


class LocalHeldUpload:
    """An upload whose ``data`` this request has locked (see the module's docstring)."""

    def __init__(
        self,
        store: LocalResumableStore,
        directory: Path,
        fd: int | None,
        info: UploadInfo,
        state_size: int,
    ) -> None:
        self._store = store
        self._dir = directory
        self._fd: int | None = fd
        self.info = info
        self.written = 0
        self.untrusted = False
        """Its data holds bytes past the committed offset: :meth:`cut_sync` before use."""
        self._state_size = state_size
        """The bytes of ``info.json``: whether a commit appends, or writes it anew."""

    def cut_sync(self) -> None:
        assert self._fd is not None
        self._fd = _cut(self._dir, self._fd, self.info.offset)
        os.lseek(self._fd, self.info.offset, os.SEEK_SET)
        self.untrusted = False

    async def append(self, chunks: AsyncIterator[Buffer], *, digest: Digest | None = None) -> None:
        pending: list[Buffer] = []
        size = 0
        in_flight: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                pending.append(chunk)
                size += len(chunk)
                if size >= _BLOCK:
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(self._write(pending, size, digest))
                    pending, size = [], 0
        finally:
            # Whatever the stream delivered before it ended or failed is written: the caller
            # may commit it (a client that lost its connection resumes after it).
            if in_flight is not None:
                await asyncio.shield(in_flight)
            if pending:
                await asyncio.shield(self._write(pending, size, digest))

    async def _write(self, buffers: list[Buffer], size: int, digest: Digest | None) -> None:
        await self._store._call(self._write_sync, buffers, digest)
        self.written += size

    def _write_sync(self, buffers: list[Buffer], digest: Digest | None) -> None:
        assert self._fd is not None
        try:
            write_all(self._fd, buffers)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("not enough space left on the storage device") from None
            raise
        if digest is not None:
            for buffer in buffers:
                digest.update(buffer)  # hashlib lets go of the GIL for large buffers

    async def commit(self, info: UploadInfo, *, release_data: bool = False) -> None:
        if self._commits_on_loop(release_data):
            self._commit_sync(info, release_data)  # a line appended, a second name unlinked
        else:
            await asyncio.shield(self._store._call(self._commit_sync, info, release_data))

    def _commits_on_loop(self, release_data: bool) -> bool:
        """Whether the commit is cheaper on the loop than a trip to a thread (see
        :meth:`LocalResumableStore._lock`): nothing to flush, no state to write anew, and no
        inode freed by the release (the data is the stored file too)."""
        assert self._fd is not None
        return (
            not self._store.fsync
            and self._state_size < _COMPACT_AT
            and (not release_data or os.fstat(self._fd).st_nlink > 1)
        )

    def _commit_sync(self, info: UploadInfo, release_data: bool = False) -> None:
        assert self._fd is not None
        if self._store.fsync and self.written:
            os.fsync(self._fd)
        self._state_size = _append_info(
            self._dir, info, self._state_size, durable=self._store.fsync
        )
        self.info, self.written = info, 0
        if release_data:
            self._release_data_sync()

    async def rollback(self) -> None:
        await self._store._call(self._rollback_sync)

    def _rollback_sync(self) -> None:
        assert self._fd is not None
        self._fd = _cut(self._dir, self._fd, self.info.offset)
        os.lseek(self._fd, self.info.offset, os.SEEK_SET)
        self.written = 0

    async def release_data(self) -> None:
        await self._store._call(self._release_data_sync)

    def _release_data_sync(self) -> None:
        # Its state says published (committed before): from here on it is held without a
        # lock. The descriptor is closed here, off the loop: where the stored file is a copy
        # (a final's concatenation), this frees the inode.
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / _DATA)
        self.close_sync()

    async def remove(self) -> None:
        await asyncio.shield(self._store._call(self._remove_sync))

    def _remove_sync(self) -> None:
        # The state first: from then on the upload is gone, whatever is left of its folder.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / _INFO)
        shutil.rmtree(self._dir, ignore_errors=True)
        self.close_sync()  # the data's last name is gone: its inode is freed here, off the loop
        if self._store.fsync:
            with contextlib.suppress(FileNotFoundError):
                fsync_directory(self._store.folder)

    def close_sync(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the flock


def _cut(directory: Path, fd: int, size: int) -> int:
    """``data`` (open as ``fd``, locked) cut to its first ``size`` bytes; the descriptor of the
    ``data`` that is then in place. One that is also a stored file's (a second link) is left
    as it is: a new file with those bytes, locked before anyone can open it, replaces it."""
    if os.fstat(fd).st_nlink <= 1:
        os.ftruncate(fd, size)
        return fd
    temporary = directory / f".{_DATA}.{os.getpid()}.{time.monotonic_ns()}"
    with placed_locked(temporary, directory / _DATA, flags=os.O_RDWR) as new:
        copy_start(fd, new, size)
    os.close(fd)
    return new


def _read_info(directory: Path) -> UploadInfo | None:
    return _read_state(directory)[0]


def _read_state(directory: Path) -> tuple[UploadInfo | None, int]:
    """The upload's state, and the size of its ``info.json``."""
    try:
        raw = (directory / _INFO).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, 0
    return last_state(raw), len(raw)


def last_state(raw: bytes) -> UploadInfo | None:
    """The state an ``info.json`` holds: its last whole line. A line without its newline is
    being written, or was cut short by a crash; one that is not a state (a torn page) is
    skipped, so the commit before it stands. A file of one line without a newline is a state
    written whole (by an earlier version, which wrote none)."""
    lines = raw.split(b"\n")
    for line in reversed(lines[:-1] if len(lines) > 1 else lines):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return UploadInfo.from_json(line)
    return None


def _append_info(directory: Path, info: UploadInfo, size: int, *, durable: bool) -> int:
    """``info`` as the upload's state: a line appended to ``info.json`` of ``size`` bytes (see
    the module), or the file written anew past :data:`_COMPACT_AT`; its new size."""
    if size >= _COMPACT_AT:
        return _write_info(directory, info, durable=durable)
    line = info.to_json() + b"\n"
    fd = os.open(directory / _INFO, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        end = os.fstat(fd).st_size
        # After a line a failed write left without its newline, a newline first: the new line
        # must stand alone, or it would not count.
        if end > 0 and os.pread(fd, 1, end - 1) != b"\n":
            line = b"\n" + line
        write_all(fd, [line])
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return end + len(line)


def _write_info(directory: Path, info: UploadInfo, *, durable: bool, new: bool = False) -> int:
    """``info.json`` anew, ``info`` its one line: a temporary file renamed over it (``new``:
    there is none yet, so it is written in place); its size."""
    temporary = directory / (_INFO if new else f".{_INFO}.{os.getpid()}.{time.monotonic_ns()}")
    line = info.to_json() + b"\n"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, [line])
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not new:
        os.rename(temporary, directory / _INFO)
    if durable:
        fsync_directory(directory)
    return len(line)
