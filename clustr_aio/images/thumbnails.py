"""Thumbnails rendered with libvips (pyvips, the pyvips-binary wheel), cached on disk.

- **Render**: ``pyvips.Image.thumbnail`` opens the file with shrink-on-load (a JPEG is decoded at
  1/2, 1/4 or 1/8 of its size, a WebP at the size asked), applies the EXIF orientation, converts
  an ICC profile to sRGB, takes the first frame of an animation and never upscales; the result
  is saved as WebP, JPEG or AVIF without metadata.
- **Off the event loop, bounded**: renders run on ``workers`` threads (libvips releases the
  GIL); requests wait in a priority queue of at most ``queue_limit`` renders, and one more is
  :class:`ThumbnailsBusy` (503 with ``Retry-After``). Eager renders (after an upload) queue
  behind every request and never count toward the limit's refusals of requests.
- **Cached**: ``cache_dir/<file key>/<size>.<format>``, written to a temporary file and renamed
  (atomic: a reader sees all of a thumbnail or none). The directory must not be served; the
  application puts it under a dot-name that ``/uploads`` and nginx refuse. The ETag is the
  render's identity (file content hash, size, format, renderer version): strong, since the same
  inputs give the same bytes, and a changed file is a new key.
- **Single-flight**: concurrent requests for one thumbnail in a process share one render; across
  processes (``WORKERS=N``) an ``flock`` on the thumbnail's lock file makes the others wait and
  then find the file.
- **Removals seen by every process**: removing a file's thumbnails (:meth:`Thumbnailer.remove`,
  :meth:`Thumbnailer.prune`) moves the host's removals counter (:meth:`Thumbnailer.removals`,
  a :class:`~clustr_aio.catalog.changes.ChangeCounter` in the cache folder, made with it), so
  that a worker keeping thumbnails' bytes in memory (:mod:`clustr_aio.web.hot_thumbnails`)
  drops them when another worker deleted a file.
- **Corrupt images**: a file libvips cannot decode gets an ``<size>.<format>.error`` file beside,
  and every later request is the same :class:`ThumbnailUnavailable` (422) without a render.
- **Shared**: with a store every instance shares (``shared``, the storage's
  :class:`~clustr_aio.storage.base.DerivedStoring`: a bucket), that store holds the thumbnails
  (and the failures) and the folder is this instance's cache of it: a thumbnail missing here is
  looked for there first and copied into the cache when another instance made it; one rendered
  here is put there (a conditional write: instances rendering it at once store it once, and the
  same inputs make the same bytes). The source is then opened only to render: a copy fetched
  from the store (``Source`` may be a context manager that makes one and removes it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from clustr_aio.catalog.changes import ChangeCounter
from clustr_aio.domain.errors import ClustrError, ThumbnailsBusy, ThumbnailUnavailable
from clustr_aio.runtime.memory import malloc_trim
from clustr_aio.storage.base import DerivedFile, DerivedStoring
from clustr_aio.storage.local import write_all
from clustr_aio.storage.scan import names_in_chunks

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "RENDERER_VERSION",
    "THUMBNAIL_DIR",
    "THUMBNAIL_TYPES",
    "RenderError",
    "Source",
    "Thumbnail",
    "ThumbnailFormat",
    "Thumbnailer",
    "render",
]

THUMBNAIL_DIR: Final = ".thumbnails"
"""The cache's directory in the upload folder (a dot-name: never served)."""
REMOVALS_FILE: Final = ".removals"
"""The removals counter's file in the cache directory (no thumbnails' folder: a dot-name)."""

THUMBNAIL_TYPES: Final = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/avif", "image/heic"}
)
"""The stored types that have thumbnails: the image types the upload checks."""

RENDERER_VERSION: Final = "vips2"
"""Part of every ETag and cache name: bump it when the rendering changes."""

_REMEMBERED: Final = 10_000
_PRUNE_CHUNK: Final = 1000
"""Files :class:`Thumbnailer` remembers, with their owner and the thumbnails of theirs found
in the cache (a few MB)."""

SHARED_PREFIX: Final = "thumbnails/"
"""Where a file's thumbnails are among what a shared store derives from it."""
FAILED_TYPE: Final = "application/vnd.clustr.thumbnail-failure"
"""The content type of a shared store's note that an image cannot be rendered (the body says
why): one key per thumbnail, so a single read finds either."""

log = logging.getLogger("clustr_aio.images")

Source = str | os.PathLike[str] | Callable[[], AbstractAsyncContextManager[Path]]
"""An image file to render from, or a context manager that makes one (a copy fetched from a
store elsewhere) and removes it: opened only when a render is due."""

FormatName = Literal["webp", "jpeg", "avif"]
DEFAULT_FORMAT: Final = "webp"


@dataclass(frozen=True, slots=True)
class ThumbnailFormat:
    name: FormatName
    content_type: str
    saver: str
    options: dict[str, object] = field(default_factory=dict)


FORMATS: Final[dict[str, ThumbnailFormat]] = {
    "webp": ThumbnailFormat("webp", "image/webp", "webpsave_buffer", {"Q": 80, "effort": 2}),
    "jpeg": ThumbnailFormat(
        "jpeg", "image/jpeg", "jpegsave_buffer", {"Q": 82, "optimize_coding": True}
    ),
    "avif": ThumbnailFormat(
        "avif", "image/avif", "heifsave_buffer", {"Q": 55, "compression": "av1", "effort": 2}
    ),
}


@dataclass(frozen=True, slots=True)
class Thumbnail:
    path: Path
    etag: str
    """Quoted, strong: ``"<hex>"``."""
    content_type: str
    size: int
    """Bytes."""


@dataclass(slots=True)
class _Seen:
    """What a hot GET needs of a file, from its record (see :meth:`Thumbnailer.cached`)."""

    content_hash: str
    owner: str | None
    found: dict[tuple[int, str], Thumbnail] = field(default_factory=dict)
    """Its thumbnails found in the cache, by size and format name."""


class RenderError(Exception):
    """The image cannot be decoded; ``str()`` says why, without the server's paths."""


def render(source: str, size: int, fmt: ThumbnailFormat) -> bytes:
    """The thumbnail of the image file ``source``, longest side ``size`` (never larger than the
    image). Blocking; raises :class:`RenderError` for what libvips cannot decode."""
    pyvips = _vips()
    try:
        # An ICC profile (or CMYK) is converted to sRGB; without one the pixels are sRGB
        # already, and asking for the conversion anyway would cost a 12 MP JPEG 11 ms of lcms.
        header = pyvips.Image.new_from_file(source)
        convert = header.get_typeof("icc-profile-data") != 0 or header.interpretation == "cmyk"
        options = {"export_profile": "srgb"} if convert else {}
        shrink = _jpeg_shrink(header, size)
        if shrink > 1:
            # Decoded at 1/shrink by libjpeg, then scaled the rest of the way (orientation,
            # profile and all, as thumbnail does).
            loaded = pyvips.Image.new_from_file(
                source, shrink=shrink, access="sequential", fail_on="error"
            )
            image = loaded.thumbnail_image(size, height=size, size="down", **options)
        else:
            image = pyvips.Image.thumbnail(
                source, size, height=size, size="down", fail_on="error", **options
            )
        data: bytes = getattr(image, fmt.saver)(keep="none", **fmt.options)
    except pyvips.Error as error:
        # libvips' message ends with the loader's complaint; it names the file by its path.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = (lines[-1] if lines else "it does not decode").replace(source, "the file")
        raise RenderError(reason) from None
    return data


_FINAL_REDUCE: Final = 1.5
"""What a JPEG decoded at a reduced scale leaves at least for the final resize.

libvips' thumbnail leaves at least 2: a 12-megapixel photo's 256-pixel thumbnail is decoded at
1/4 (1000 x 750), the libjpeg decode then costs 56 ms of CPU against 50 ms at 1/8 (500 x 375),
and the whole render 68 against 51 ms (bench T2's photos, one thread). 1/8 is what Pillow's
``draft`` takes too; the DCT scaling averages each 8 x 8 block, so the 1.95x left to Lanczos
does not alias."""


def _jpeg_shrink(header: Any, size: int) -> int:
    """The JPEG shrink-on-load factor (1, 2, 4 or 8) for a thumbnail of longest side ``size``;
    1 for any other loader (thumbnail chooses theirs)."""
    if header.get_typeof("vips-loader") == 0 or header.get("vips-loader") != "jpegload":
        return 1
    longest = max(header.width, header.height)
    for shrink in (8, 4, 2):
        if longest / shrink >= size * _FINAL_REDUCE:
            return shrink
    return 1


@functools.cache
def _vips() -> Any:
    """pyvips, imported on the first render (loading libvips costs start-up time), with its
    operation cache off (a file deleted and uploaded again under its name must not come from a
    cached decode; the cache would hold memory and file descriptors) and one thread per render:
    the Thumbnailer runs renders side by side itself, and libvips' own worker threads cost a
    12-megapixel JPEG's thumbnail 41 ms of CPU instead of 36 (49 ms wall instead of 37)."""
    import pyvips

    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    return pyvips


Renderer = Callable[[str, int, ThumbnailFormat], bytes]


@dataclass(slots=True)
class _Job:
    source: Source
    stored_name: str | None
    """The file's name in a shared store (None: not shared)."""
    target: Path
    size: int
    fmt: ThumbnailFormat
    future: asyncio.Future[None]
    request: bool
    """A request waits for it (else an eager render); it then counts toward the queue limit."""
    started: bool = False


class Thumbnailer:
    """Renders and caches thumbnails; open with :meth:`start`, release with :meth:`close`."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        workers: int = 2,
        queue_limit: int = 64,
        eager_limit: int = 10_000,
        on_rendered: Callable[[], None] = lambda: None,
        renderer: Renderer = render,
        shared: DerivedStoring | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.shared = shared
        self.workers = workers
        self.queue_limit = queue_limit
        self.eager_limit = eager_limit
        self._on_rendered = on_rendered
        self._render = renderer
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._pending_requests = 0
        self._inflight: dict[Path, _Job] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        """The last files asked for (LRU): a hot thumbnail is found without the catalog nor
        a look at the disk (see :meth:`cached`)."""
        self._removals: ChangeCounter | None = None

    async def start(self) -> None:
        """Start the render threads; the cache directory is made by the first render."""
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="thumbnail")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._removals is not None:
            self._removals.close()
            self._removals = None

    def removals(self) -> ChangeCounter | None:
        """The host's count of thumbnail removals (by any process on this cache folder):
        what was read from the folder under one stable value may be kept while the value
        stays the same (see :meth:`ChangeCounter.stable`). Opened on first use, in each
        process (after any fork); None while the cache folder does not exist (nothing can
        have been read from it)."""
        if self._removals is None:
            with contextlib.suppress(FileNotFoundError):
                self._removals = ChangeCounter(self.cache_dir / REMOVALS_FILE)
        return self._removals

    @staticmethod
    def identity(content_hash: str, size: int, fmt: ThumbnailFormat) -> str:
        """The thumbnail's ETag value (unquoted) and cache name stem."""
        material = f"{content_hash}:{size}:{fmt.name}:{RENDERER_VERSION}"
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def _target(self, file_key: str, etag: str, size: int, fmt: ThumbnailFormat) -> Path:
        return self.cache_dir / file_key / f"{size}-{etag}.{fmt.name}"

    def cached(
        self, file_key: str, size: int, fmt: ThumbnailFormat, *, sees: str | None = None
    ) -> Thumbnail | None:
        """The thumbnail, if the file was seen lately (by :meth:`get`), it is in the cache, and
        ``sees`` may see it (None: every owner's files; else its owner's only); None otherwise
        (then ask the catalog, and :meth:`get`). Once found, a thumbnail is remembered without
        looking at the disk again: its name never changes contents. A file deleted by this
        process is forgotten (:meth:`remove`); one deleted by another had its thumbnails
        removed first, so opening the path fails: then :meth:`forget` it and ask the catalog.
        Raises :class:`ThumbnailUnavailable` for an image that could not be rendered."""
        seen = self._seen.get(file_key)
        if seen is None or (sees is not None and seen.owner != sees):
            return None
        self._seen.move_to_end(file_key)
        key = (size, fmt.name)
        thumbnail = seen.found.get(key)
        if thumbnail is not None:
            return thumbnail
        etag = self.identity(seen.content_hash, size, fmt)
        target = self._target(file_key, etag, size, fmt)
        found = _cached(target)
        if found is None:
            return None
        thumbnail = seen.found[key] = Thumbnail(target, f'"{etag}"', fmt.content_type, found)
        return thumbnail

    def forget(self, file_key: str) -> None:
        """Forget what :meth:`cached` knows of a file (its thumbnails were not where it said)."""
        self._seen.pop(file_key, None)

    def _remember(self, file_key: str, content_hash: str, owner: str | None) -> None:
        seen = self._seen.get(file_key)
        if seen is None or seen.content_hash != content_hash or seen.owner != owner:
            self._seen[file_key] = _Seen(content_hash, owner)
        self._seen.move_to_end(file_key)
        if len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)

    async def get(
        self,
        source: Source,
        *,
        file_key: str,
        content_hash: str,
        size: int,
        fmt: ThumbnailFormat,
        stored_name: str | None = None,
        request: bool = True,
        owner: str | None = None,
    ) -> Thumbnail:
        """The cached thumbnail, rendered first if it is not there yet (or, with a shared
        store and the file's ``stored_name`` in it, copied from there if another instance
        made it). ``file_key`` must be a safe single path segment (a catalog id); ``owner`` is
        its record's, for :meth:`cached`. Raises :class:`ThumbnailsBusy` when the queue is
        full and :class:`ThumbnailUnavailable` for an image that cannot be rendered."""
        self._remember(file_key, content_hash, owner)
        etag = self.identity(content_hash, size, fmt)
        target = self._target(file_key, etag, size, fmt)
        found = _cached(target)
        if found is None:
            job = self._inflight.get(target)
            if job is None:
                if request and self._pending_requests >= self.queue_limit:
                    raise ThumbnailsBusy(
                        "too many thumbnails are being rendered; try again shortly"
                    )
                job = self._enqueue(source, stored_name, target, size, fmt, request=request)
            elif request and not job.request and not job.started:
                # An eager render nobody waited for: a request now does, so it moves up.
                job.request = True
                self._pending_requests += 1
                self._queue.put_nowait((0, next(self._order), job))
            await asyncio.shield(job.future)
            found = _cached(target)
            if found is None:  # removed meanwhile (the file was deleted)
                raise ThumbnailUnavailable("the file's thumbnails were removed while rendering")
        return Thumbnail(target, f'"{etag}"', fmt.content_type, found)

    def prefetch(
        self,
        source: Source,
        *,
        file_key: str,
        content_hash: str,
        size: int,
        fmt: ThumbnailFormat,
        stored_name: str | None = None,
    ) -> None:
        """Queue an eager render (``THUMBNAILS=eager``, after an upload's 200) behind every
        request, unless it is cached, queued, or ``eager_limit`` renders already wait. With a
        shared store it ends up there too."""
        etag = self.identity(content_hash, size, fmt)
        target = self._target(file_key, etag, size, fmt)
        if target in self._inflight or self._queue.qsize() >= self.eager_limit:
            return
        try:
            if _cached(target) is not None:
                return
        except ThumbnailUnavailable:
            return
        self._enqueue(source, stored_name, target, size, fmt, request=False)

    def _enqueue(
        self,
        source: Source,
        stored_name: str | None,
        target: Path,
        size: int,
        fmt: ThumbnailFormat,
        *,
        request: bool,
    ) -> _Job:
        future = asyncio.get_running_loop().create_future()
        shared_name = stored_name if self.shared is not None else None
        job = _Job(source, shared_name, target, size, fmt, future, request)
        self._inflight[target] = job
        self._pending_requests += request
        self._queue.put_nowait((0 if request else 1, next(self._order), job))
        return job

    async def remove(self, file_keys: Sequence[str]) -> None:
        """Forget every thumbnail of these files (they were deleted), in one trip to a thread;
        the removals counter moves on once they are gone."""
        for file_key in file_keys:
            self._seen.pop(file_key, None)
        if file_keys:
            folders = [self.cache_dir / file_key for file_key in file_keys]
            await asyncio.to_thread(self._remove_sync, folders)

    def _remove_sync(self, folders: list[Path]) -> None:
        with self._removing():
            for folder in folders:
                shutil.rmtree(folder, True)

    def _removing(self) -> contextlib.AbstractContextManager[None]:
        """Around a removal: the removals counter moves on once it is done."""
        removals = self.removals()
        return removals.changing() if removals is not None else contextlib.nullcontext()

    async def prune(
        self, recorded: Callable[[list[str]], Awaitable[set[str]]], *, before: float
    ) -> int:
        """Remove the thumbnails of files that have no record (a crash between a delete's
        unlink and its :meth:`remove`, a file an operator removed); how many files' were.
        ``recorded(names)`` answers which of the cache's folder names are a record's id,
        asked :data:`_PRUNE_CHUNK` folders at a time. A folder changed since ``before`` (a
        Unix time: when the prune began) is left alone, since its file may have been stored
        since."""
        pruned = 0
        async for names in names_in_chunks(self.cache_dir, _PRUNE_CHUNK, _is_folder):
            known = await recorded(names)
            unknown = [name for name in names if name not in known]
            if unknown:
                pruned += await asyncio.to_thread(self._prune_sync, unknown, before)
        return pruned

    def _prune_sync(self, names: list[str], before: float) -> int:
        pruned = 0
        for name in names:
            folder = self.cache_dir / name
            with contextlib.suppress(FileNotFoundError):
                if folder.lstat().st_mtime >= before:
                    continue
                with self._removing():
                    shutil.rmtree(folder)
                pruned += 1
        return pruned

    async def _work(self) -> None:
        while True:
            _, _, job = await self._queue.get()
            if job.started:  # queued twice (moved up for a request): done already
                continue
            job.started = True
            try:
                rendered = await self._produce(job)
            except BaseException as error:  # handed to the requests waiting for it
                if not job.future.done():
                    job.future.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                if rendered:
                    self._on_rendered()
                job.future.set_result(None)
            finally:
                self._pending_requests -= job.request
                self._inflight.pop(job.target, None)
                # Nobody may be waiting any more: a stored exception must not be reported.
                if job.future.done() and not job.future.cancelled():
                    job.future.exception()

    async def _produce(self, job: _Job) -> bool:
        """Put ``job``'s thumbnail (or its failure) in the cache: copied from the shared store
        when another instance made it, else rendered here and then shared. True when this
        process rendered it."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        variant = SHARED_PREFIX + job.target.name
        if self.shared is not None and job.stored_name is not None:
            found = await self.shared.get_derived(job.stored_name, variant)
            if found is not None:
                await loop.run_in_executor(self._executor, _adopt, job.target, found)
                return False
        async with _opened(job.source) as source:
            made = await loop.run_in_executor(self._executor, self._run, job, source)
        if made is None:
            return False
        if self.shared is not None and job.stored_name is not None:
            try:
                await self.shared.put_derived(
                    job.stored_name, variant, made.data, made.content_type
                )
            except ClustrError as error:  # served from here all the same; shared next time
                log.warning("a thumbnail could not be stored in the shared store: %s", error)
        return True

    def _run(self, job: _Job, source: str) -> DerivedFile | None:
        """Render ``job`` from ``source`` unless another process did: what this one made (a
        thumbnail, or a failure's reason), None when another had. Blocking."""
        job.target.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(job.target.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker rendering it: wait for its file
            if _cached(job.target) is not None:
                return None
            try:
                data = self._render(source, job.size, job.fmt)
            except RenderError as error:
                reason = str(error).encode()[:500]
                _publish(_error_path(job.target), reason)
                return DerivedFile(reason, FAILED_TYPE)
            finally:
                # What libvips freed stays in this thread's malloc arena, fragmented, and the
                # next render's needs land beside it: 1 thread's peak over 80 renders of 12 MP
                # JPEGs 47 MiB, 42 with the trim, for about 1 ms of CPU (of 50) a render.
                malloc_trim()
            _publish(job.target, data)
            return DerivedFile(data, job.fmt.content_type)
        finally:
            os.close(lock)


@contextlib.asynccontextmanager
async def _opened(source: Source) -> AsyncIterator[str]:
    """The path of the image file ``source`` is or makes (and removes afterwards)."""
    if isinstance(source, str | os.PathLike):
        yield os.fspath(source)
        return
    async with source() as path:
        yield os.fspath(path)


def _adopt(target: Path, found: DerivedFile) -> None:
    """Put a thumbnail (or failure) another instance made into this instance's cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if found.content_type == FAILED_TYPE:
        _publish(_error_path(target), found.data)
    else:
        _publish(target, found.data)


def _error_path(target: Path) -> Path:
    return target.with_name(target.name + ".error")


def _cached(target: Path) -> int | None:
    """The cached thumbnail's size in bytes; None when not rendered. Raises
    :class:`ThumbnailUnavailable` when the image could not be rendered."""
    try:
        return os.stat(target).st_size
    except FileNotFoundError:
        pass
    try:
        reason = _error_path(target).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return None
    raise ThumbnailUnavailable(f"the image cannot be rendered: {reason}")


def _publish(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, (data,))
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _is_folder(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)
