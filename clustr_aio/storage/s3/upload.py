"""A batch of files streamed into the bucket as they arrive, under names nobody else can take.

**Small files** (at most ``S3_PART_SIZE``) are held until their last byte and sent in one
``PUT`` with ``If-None-Match: *``: the store writes the key only if it does not exist, so two
instances uploading ``photo.jpg`` at the same instant cannot overwrite each other; the loser's
412 sends it to ``photo-1.jpg``, and so on (after a first 412, one listing of the name's
alternatives skips those already taken).

**Large files** go up in parts of ``S3_PART_SIZE`` (a multipart upload), each part sent while
the next is received. The parts leave this process as they come, so a ``412`` on
``CompleteMultipartUpload`` could not be answered by trying the next name: the bytes are gone.
So a large file *claims* its name first, with a small placeholder object written with
``If-None-Match: *`` (its body unique to this upload), and its multipart upload completes with
``If-Match: <the placeholder's ETag>``: it replaces its own placeholder, and nothing else, ever.

**Nothing is visible before the catalog says so.** Objects are written under their final
names before the batch ends (S3 has no rename, and copying every object again would double the
work), so ``GET /uploads/{name}`` serves an object only when the catalog has its record: the
catalog is the source of truth. A refused or abandoned batch deletes what it wrote and aborts
its multipart uploads (:meth:`S3Batch.discard`); what a killed process could not delete, the
reconciliation removes once it is older than ``S3_ORPHAN_GRACE`` (:mod:`.storage`).

**Memory.** What one upload holds: the part (or small file) being received, as the chunks that
came; the parts or small files on their way to the store, 32 MiB together at most (one part
at least; at most 16 requests; whichever ends first makes room for the next); and a large
file's first 5 MiB, held back as part 1 until the file is closed (a header patch may still
come). A send starts only when that budget has room for it; until then the upload waits, its
body is not read, and TCP holds the client back: a slow store slows the client, it never fills
the server's memory. A body is built once, each chunk let go as it is copied in (never two
copies of a part), and read out by the HTTP client in 64 KiB pieces, so no second copy waits in
a socket buffer. The stated bound (:func:`memory_bound`):

    peak RSS ≤ 64 MiB + S3_PART_SIZE x parts in flight

where 64 MiB is the process itself (:data:`PROCESS_MEMORY`) and each upload in flight
(``MAX_CONCURRENT_UPLOADS`` at most) counts :func:`parts_in_flight` parts: 5 with 16 MiB
parts, so 144 MiB for one upload. bench/s3.py and tests/process/test_bounds.py hold the peak
to it. That takes glibc returning what was sent
(:func:`~clustr_aio.runtime.memory.fix_mmap_threshold`: else a freed part's memory stays
resident for reuse, a part more).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Final

from botocore.exceptions import ClientError

from clustr_aio.storage.base import Buffer
from clustr_aio.storage.s3.client import is_missing, store_errors

if TYPE_CHECKING:
    from clustr_aio.storage.s3.storage import S3Storage

__all__ = [
    "PROCESS_MEMORY",
    "S3Batch",
    "S3File",
    "memory_bound",
    "parts_in_flight",
]

log = logging.getLogger("clustr_aio.storage")

HEAD_PART_SIZE: Final = 5 * 1024 * 1024
"""A large file's first part, S3's smallest: held back until the file is closed, so a patch
of its header can still be applied (:class:`~clustr_aio.storage.base.HeadPatching`)."""
_BYTES_IN_FLIGHT: Final = 32 * 1024 * 1024
"""Bytes one upload may have on their way to the store (one part at least): parts go up side by
side (a store takes parallel parts faster than one stream: two of 16 MiB, four of 8 MiB), and
small files many at a time."""
_SENDS_IN_FLIGHT: Final = 16
"""Most requests to the store one upload has under way (as many as boto3's transfer threads)."""
PROCESS_MEMORY: Final = 64 * 1024 * 1024
"""The bound's base: what a ``STORAGE=s3`` process holds with no upload in flight, once it
has answered ``/readyz`` (61-63 MiB measured against a plain-HTTP SeaweedFS, about 1 MiB more
with TLS; 13 of them aiobotocore and botocore: their modules, and their S3 model and endpoint
rules read lean, see :mod:`.lean_data`)."""


def parts_in_flight(part_size: int) -> int:
    """The parts' worth one upload holds at most with ``S3_PART_SIZE`` = ``part_size``:
    those on their way to the store (:data:`_BYTES_IN_FLIGHT`'s worth, one at least: two of
    16 MiB), the part being received, a large file's first part held back (5 MiB, S3's
    smallest part), and one for the buffers around them: the chunk being copied into a part,
    the request reader's and the HTTP client's buffers, the hasher's blocks (2 MiB), the
    signer's 1 MiB reads of a body (3-4 MiB measured in all, under S3's smallest part)."""
    return max(1, _BYTES_IN_FLIGHT // part_size) + 3


def memory_bound(part_size: int, uploads: int = 1) -> int:
    """The stated bound on a process's peak RSS, in bytes, with ``uploads`` uploads in flight:
    64 MiB + ``S3_PART_SIZE`` x parts in flight."""
    return PROCESS_MEMORY + part_size * parts_in_flight(part_size) * uploads


PENDING_METADATA: Final = "clustr-pending"
"""Metadata of a large file's placeholder: the name is claimed, its bytes are on their way."""


class S3Batch:
    """The objects one request writes: all kept (once catalogued), or all removed."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.id = uuid.uuid4().hex
        self._files: list[S3File] = []
        self._left_out: set[int] = set()
        self._published = False
        self._sending: dict[asyncio.Task[None], int] = {}
        """The sends under way and their bytes; a send leaves it when it is done."""
        self._sending_bytes = 0
        self._failed: asyncio.Task[None] | None = None
        """The first send that failed: the batch fails with its error."""

    def add_file(self, desired_name: str) -> S3File:
        file = S3File(self, desired_name)
        self._files.append(file)
        return file

    async def send(self, size: int, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Start ``work`` (sending ``size`` bytes) in the background once the sends in flight
        leave room for it in the budget (whichever of them ends first makes room); till then
        the caller waits, and with it the reading of the request. A failed send raises here,
        in a later send, or in publish()."""
        budget = max(self.storage.config.part_size, _BYTES_IN_FLIGHT)
        self._raise_failure()
        while self._sending and (
            self._sending_bytes + size > budget or len(self._sending) >= _SENDS_IN_FLIGHT
        ):
            # Not cancelled with the caller: a send is awaited to its end by discard().
            await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
            self._raise_failure()
        task = asyncio.ensure_future(work())
        self._sending[task] = size
        self._sending_bytes += size
        task.add_done_callback(self._sent)
        return task

    def _sent(self, task: asyncio.Task[None]) -> None:
        size = self._sending.pop(task, None)
        if size is None:  # discard() took it over
            return
        self._sending_bytes -= size
        if self._failed is None and (task.cancelled() or task.exception() is not None):
            self._failed = task

    def _raise_failure(self) -> None:
        if self._failed is None:
            return
        if self._failed.cancelled():  # the loop is going away: so is this upload
            raise asyncio.CancelledError
        error = self._failed.exception()
        assert error is not None
        raise error

    async def publish(self) -> list[str]:
        """Every object is in place once its sends are done: wait for them, and remove those
        left out. (The names were taken as the files were written; the catalog commit that
        follows makes them served.)"""
        while self._sending:
            await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
            self._raise_failure()
        self._raise_failure()
        self._published = True
        for n in sorted(self._left_out):
            await self._files[n].remove()
        names = []
        for n, file in enumerate(self._files):
            assert file.name is not None, "publish() before every file was closed"
            if n not in self._left_out:
                names.append(file.name)
        return names

    async def leave_out(self, slots: Collection[int]) -> None:
        """Objects not to keep (refused, duplicates): removed by the publish, or at once after
        it (an object is never served without its record, so nothing waits for them)."""
        new = sorted(set(slots) - self._left_out)
        self._left_out.update(new)
        if self._published:
            for n in new:
                await self._files[n].remove()

    async def seal(self) -> None:
        """Nothing to do: the catalog's commit is what makes a bucket's objects served."""

    async def discard(self) -> None:
        """Remove every object of the batch and abort its multipart uploads, once the sends in
        flight have finished (a PUT that lands after its delete would stay behind)."""
        pending = list(self._sending)
        self._sending.clear()
        self._sending_bytes = 0
        for work in pending:
            with contextlib.suppress(BaseException):
                await work
        for file in self._files:
            await file.remove()


class S3File:
    """One file: held while small, a multipart upload once it outgrows a part."""

    def __init__(self, batch: S3Batch, desired_name: str) -> None:
        self.batch = batch
        self.desired_name = desired_name
        self.name: str | None = None
        """The name it is stored as: taken by its PUT, or claimed by its placeholder."""
        self._chunks: list[Buffer] = []  # received, not yet sent: at most a part's worth
        self._held = 0
        self._upload_id: str | None = None
        self._placeholder_etag: str | None = None
        self._parts: list[dict[str, object]] = []
        self._part_sends: list[asyncio.Task[None]] = []
        self._head: list[Buffer] = []  # a large file's part 1, held back for patches
        self._patches: list[tuple[int, bytes]] = []
        self._written: set[str] = set()  # keys this file created (to delete on discard)

    def patch(self, offset: int, data: bytes) -> None:
        """:class:`~clustr_aio.storage.base.HeadPatching`: applied when the file is closed,
        to a small file's bytes, or to a large file's first part, which is held back until
        then (the first 5 MiB: a header field, such as a WebP's RIFF size, lies there)."""
        self._patches.append((offset, data))

    async def write(self, data: Buffer) -> None:
        part_size = self.batch.storage.config.part_size
        view = memoryview(data)
        while len(view):
            take = min(len(view), part_size - self._held)
            self._chunks.append(view[:take])
            self._held += take
            view = view[take:]
            if self._held == part_size:
                if self._upload_id is None:
                    await self._start_multipart()
                else:
                    await self._send_part(self._new_part(), *self._take_chunks())

    async def _start_multipart(self) -> None:
        """The file outgrew one PUT: claim its name, start the upload, keep its first 5 MiB
        back as part 1 (for patches). The rest of what came begins part 2, sent once it is a
        whole part (or the file ends): sent now, it could be under S3's 5 MiB minimum for a
        part that is not the last (8 MiB parts: 3 MiB), which CompleteMultipartUpload
        refuses (EntityTooSmall)."""
        await self._claim_name()
        self._head = _split(self._chunks, HEAD_PART_SIZE)
        self._held -= HEAD_PART_SIZE
        self._new_part()  # part 1, sent by close()

    async def close(self) -> None:
        if self._upload_id is None:
            chunks, size = self._take_chunks()
            patches = self._patches
            await self.batch.send(size, lambda: self._put_small(_joined(chunks, patches)))
            return
        if self._held:
            await self._send_part(self._new_part(), *self._take_chunks())
        head, self._head = self._head, []
        await self._send_part(self._parts[0], head, HEAD_PART_SIZE, self._patches)
        await self.batch.send(0, self._complete)

    def _take_chunks(self) -> tuple[list[Buffer], int]:
        chunks, size = self._chunks, self._held
        self._chunks, self._held = [], 0
        return chunks, size

    def _new_part(self) -> dict[str, object]:
        entry: dict[str, object] = {"PartNumber": len(self._parts) + 1}
        self._parts.append(entry)
        return entry

    # -- small files -----------------------------------------------------------------------

    async def _put_small(self, body: io.BytesIO) -> None:
        storage = self.batch.storage
        try:
            self.name = await storage.free_names.take(
                self.desired_name, lambda key: self._put_if_absent(key, body, {})
            )
        finally:
            body.close()  # _freed: at once, not when the HTTP client's objects are collected

    async def _put_if_absent(
        self, key: str, body: io.BytesIO, metadata: dict[str, str]
    ) -> str | None:
        """PUT ``key`` unless it exists: its ETag, or None when it is taken."""
        storage = self.batch.storage
        body.seek(0)  # the same bytes again, after a 412 on another name
        self._written.add(key)  # before the request: it may land even if its answer never does
        with store_errors("PUT"):
            etag = await storage.small_puts.put_if_absent(
                key, body, storage.content_type_of(key), metadata
            )
        if etag is None:
            self._written.discard(key)  # someone else's: never ours to delete
        return etag

    # -- large files -----------------------------------------------------------------------

    async def _send_part(
        self,
        entry: dict[str, object],
        chunks: list[Buffer],
        size: int,
        patches: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        storage = self.batch.storage
        upload_id = self._upload_id
        assert upload_id is not None
        assert self.name is not None
        key = storage.keys.file(self.name)
        number = int(str(entry["PartNumber"]))

        async def upload() -> None:
            body = _joined(chunks, patches)
            try:
                with store_errors("UploadPart"):
                    answer = await storage.client.upload_part(
                        Bucket=storage.config.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ContentLength=size,
                    )
            finally:
                body.close()  # _freed
            entry["ETag"] = answer["ETag"]

        self._part_sends.append(await self.batch.send(size, upload))

    async def _claim_name(self) -> None:
        """Take a free name with a placeholder, then start the multipart upload on it."""
        storage = self.batch.storage
        marker = io.BytesIO(f"clustr placeholder {uuid.uuid4()}\n".encode())
        etags: dict[str, str] = {}

        async def claim(key: str) -> str | None:
            etag = await self._put_if_absent(key, marker, {PENDING_METADATA: self.batch.id})
            if etag is not None:
                etags[key] = etag
            return etag

        self.name = await storage.free_names.take(self.desired_name, claim)
        key = storage.keys.file(self.name)
        self._placeholder_etag = etags[key]
        with store_errors("CreateMultipartUpload"):
            answer = await storage.client.create_multipart_upload(
                Bucket=storage.config.bucket,
                Key=key,
                ContentType=storage.content_type_of(key),
            )
        self._upload_id = answer["UploadId"]

    async def _complete(self) -> None:
        storage = self.batch.storage
        assert self.name is not None
        assert self._upload_id is not None
        assert self._placeholder_etag is not None
        for send in self._part_sends:
            await asyncio.shield(send)  # each is the batch's too: it may be awaited twice
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in self._parts]
        with store_errors("CompleteMultipartUpload"):
            await storage.client.complete_multipart_upload(
                Bucket=storage.config.bucket,
                Key=storage.keys.file(self.name),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfMatch=self._placeholder_etag,  # our placeholder, and nobody's object
            )
        self._upload_id = None  # complete: nothing left to abort

    # -- discard ---------------------------------------------------------------------------

    async def remove(self) -> None:
        """Abort the multipart upload, delete what this file wrote. Failures are logged: the
        sweep removes what is left once it is older than S3_ORPHAN_GRACE."""
        storage = self.batch.storage
        self._chunks, self._held, self._head = [], 0, []
        try:
            if self._upload_id is not None:
                with contextlib.suppress(ClientError):
                    await storage.client.abort_multipart_upload(
                        Bucket=storage.config.bucket,
                        Key=storage.keys.file(self.name or self.desired_name),
                        UploadId=self._upload_id,
                    )
                self._upload_id = None
            for key in sorted(self._written):
                try:
                    await storage.client.delete_object(Bucket=storage.config.bucket, Key=key)
                except ClientError as error:
                    if not is_missing(error):
                        raise
            self._written.clear()
        except Exception as error:
            log.warning("object store: cannot remove what a refused upload wrote: %s", error)


def _joined(chunks: list[Buffer], patches: Sequence[tuple[int, bytes]] = ()) -> io.BytesIO:
    """The chunks copied into one buffer just before they are sent, each let go as soon as it
    is copied (so a part is in memory once, plus a chunk, never twice), then patched in place;
    read out by the HTTP client in 64 KiB pieces, so no second copy of a part waits in a
    socket's buffer.

    _freed: the caller closes it once sent, which frees the buffer there and then. botocore's
    and aiohttp's request objects keep a reference to the body and are freed only by the
    cycle collector, later: meanwhile a part already sent would stay in memory."""
    size = sum(len(chunk) for chunk in chunks)
    body = io.BytesIO()
    if size:
        body.seek(size - 1)
        body.write(b"\0")  # the whole buffer at once: no growing, no copying it again
        body.seek(0)
    chunks.reverse()
    while chunks:
        body.write(chunks.pop())
    for offset, data in patches:
        if offset + len(data) > size:
            raise ValueError(f"a patch at {offset} lies past the held {size} bytes")
        body.seek(offset)
        body.write(data)
    body.seek(0)
    return body


def _split(chunks: list[Buffer], size: int) -> list[Buffer]:
    """Take the first ``size`` bytes off ``chunks`` (in place); return them as chunks."""
    head: list[Buffer] = []
    have = 0
    while have < size:
        chunk = memoryview(chunks[0])
        take = min(len(chunk), size - have)
        head.append(chunk[:take])
        have += take
        if take == len(chunk):
            chunks.pop(0)
        else:
            chunks[0] = chunk[take:]
    return head
