"""The ingest pipeline: files in (a name and an async stream of chunks each), validated files
published to storage, all of them or none.

It knows no HTTP and no wire format. :func:`ingest_file` is the one path every source of bytes
takes into a batch — a multipart part (:func:`clustr_aio.ingest.multipart.file_parts`), a
finished resumable upload (:mod:`clustr_aio.tus.handler`) — so the checks are written once:
the extension, the bytes against the extension, the per-file size limit, an image's structure,
pixel count and metadata (:mod:`clustr_aio.images.structure`), the sha256 of the bytes sent.
:func:`ingest_batch` receives a whole request's files into one storage batch and publishes
them together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from clustr_aio.catalog.base import Catalog, FileRecord
from clustr_aio.catalog.ids import id_time, new_id
from clustr_aio.domain.errors import ClustrError, DuplicateFile, NoFilesUploaded, UnsupportedFile
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.domain.names import extension_of, safe_name
from clustr_aio.domain.sniff import SNIFF_BYTES, verify_content
from clustr_aio.images.metadata import StripMode
from clustr_aio.images.structure import ImageInfo, image_check
from clustr_aio.ingest.hashing import StreamHasher, all_hashed
from clustr_aio.ingest.in_place import InPlaceWriter
from clustr_aio.storage.base import (
    Adopting,
    BatchScope,
    Buffer,
    FileWriter,
    HeadPatching,
    Storage,
)

__all__ = [
    "Dedupe",
    "IncomingFile",
    "IngestPolicy",
    "ReceivedFile",
    "RefusedFile",
    "StoredFile",
    "allowed_extension",
    "ingest_batch",
    "ingest_each",
    "ingest_file",
]

Dedupe = Literal["off", "reuse", "reject"]


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestPolicy:
    """What an upload must satisfy to be stored."""

    allowed_extensions: frozenset[str]
    limits: UploadLimits
    field_name: str = "files"
    """Multipart parts with another name are read past (they still count toward the request
    size)."""
    dedupe: Dedupe = "off"
    """A file whose sha256 is catalogued already: stored again (off), answered with the stored
    file (reuse), or refused with 409 (reject)."""
    max_image_pixels: int = 100_000_000
    strip_metadata: StripMode = "location"


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """One file as a source delivers it: the name the client gave, and its bytes as they come.
    ``chunks`` must be read to its end before the source's next file is asked for."""

    filename: str
    chunks: AsyncIterator[Buffer]
    source: str | None = None
    """A local file that holds exactly these bytes once ``chunks`` has ended (a resumable
    upload's data): a storage that can adopt it writes only what the checks change
    (:mod:`.in_place`)."""


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file received into a batch and checked, not yet published."""

    original_filename: str
    file_size: int
    """Bytes stored: fewer than were sent when metadata was removed."""
    content_type: str
    sha256: str
    """Of the bytes the client sent (a client's own pre-check works), not of those stored."""
    slot: int
    """Its position in the storage batch (the order of ``add_file`` calls)."""
    image: ImageInfo | None = None
    """What the structure check read, for the known image types."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file this upload stored (or, with ``duplicate``, found stored): its record, as
    committed. The record itself, not a copy of its fields: an answer of 500 items builds 500
    of these, and a frozen dataclass's every field costs a call to ``object.__setattr__``."""

    record: FileRecord
    duplicate: bool = False
    """DEDUPE=reuse: these bytes were stored already, and this is that file."""

    @classmethod
    def of(cls, record: FileRecord, *, duplicate: bool = False) -> StoredFile:
        return cls(record, duplicate)

    @property
    def stored_filename(self) -> str:
        return self.record.stored_name

    @property
    def original_filename(self) -> str:
        return self.record.original_name

    @property
    def file_size(self) -> int:
        return self.record.size

    @property
    def content_type(self) -> str:
        return self.record.content_type

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def sha256(self) -> str:
        return self.record.sha256

    @property
    def created_at(self) -> datetime:
        return self.record.created_at

    @property
    def width(self) -> int | None:
        return self.record.width

    @property
    def height(self) -> int | None:
        return self.record.height

    @property
    def orientation(self) -> int | None:
        return self.record.orientation

    @property
    def metadata_removed(self) -> bool:
        return self.record.metadata_removed


@dataclass(frozen=True, slots=True)
class RefusedFile:
    """``ingest_each``: a file that was not stored, and why."""

    original_filename: str
    error: ClustrError


async def ingest_batch(
    files: AsyncIterable[IncomingFile],
    storage: Storage,
    policy: IngestPolicy,
    catalog: Catalog | None = None,
    *,
    owner: str | None = None,
) -> list[StoredFile]:
    """Receive every file into one storage batch, then publish them all and commit their
    records (to ``catalog``, when given) in one transaction, or nothing.

    Raises a :class:`~clustr_aio.domain.errors.ClustrError` on the first file that breaks the
    policy (:class:`NoFilesUploaded` when there was none), naming that file and its index; the
    batch is then discarded, as it is when the caller's task is cancelled.

    ``owner``: whose files these are (recorded with them; DEDUPE looks among that owner's
    files only); None in the open mode.
    """
    outcomes = await _ingest(files, storage, policy, catalog, atomic=True, owner=owner)
    return [o for o in outcomes if isinstance(o, StoredFile)]


async def ingest_each(
    files: AsyncIterable[IncomingFile],
    storage: Storage,
    policy: IngestPolicy,
    catalog: Catalog | None = None,
    *,
    owner: str | None = None,
) -> list[StoredFile | RefusedFile]:
    """As :func:`ingest_batch`, but a refused file (an error that is ``per_file``) is one
    :class:`RefusedFile` among the results, in its place, and the others are stored. Errors of
    the request (malformed body, request too large, disk full) still refuse it all."""
    return await _ingest(files, storage, policy, catalog, atomic=False, owner=owner)


async def _ingest(
    files: AsyncIterable[IncomingFile],
    storage: Storage,
    policy: IngestPolicy,
    catalog: Catalog | None,
    *,
    atomic: bool,
    owner: str | None,
) -> list[StoredFile | RefusedFile]:
    receiving: list[_Hashing | RefusedFile] = []
    left_out: list[int] = []  # slots received in part (then refused): never published
    async with BatchScope(storage.batch()) as batch:
        async for incoming in files:
            index = len(receiving)
            slots = batch.files
            try:
                policy.limits.check_file_count(index + 1)
                receiving.append(await _receive_file(incoming, batch, policy))
            except ClustrError as error:
                error.about(incoming.filename, index)
                if atomic or not error.per_file:
                    raise
                receiving.append(RefusedFile(incoming.filename, error))
                left_out.extend(range(slots, batch.files))
        if not receiving:
            raise NoFilesUploaded(
                f"no files were uploaded: send them as multipart parts named {policy.field_name!r}"
            )
        # The files' digests were computed while the next files arrived: wait for the last
        # ones once, here, before anything (DEDUPE's check first) reads them.
        await all_hashed()
        received = [r.received() if isinstance(r, _Hashing) else r for r in receiving]
        outcomes = await _deduplicate(received, policy.dedupe, catalog, atomic=atomic, owner=owner)
        # Duplicates (reused or refused) were received into the batch too: leave them out.
        kept = {o.slot for o in outcomes if isinstance(o, ReceivedFile)}
        left_out += [r.slot for r in received if isinstance(r, ReceivedFile) and r.slot not in kept]
        if left_out:
            await batch.leave_out(left_out)
        names = dict(zip(sorted(kept), await batch.publish(), strict=True))
        records = {
            o.slot: _new_record(o, names[o.slot], owner)
            for o in outcomes
            if isinstance(o, ReceivedFile)
        }
        raced = await _settle(catalog, records, batch, policy.dedupe, atomic, owner)
        results: list[StoredFile | RefusedFile] = []
        by_digest = dict(raced)  # the record a duplicate in this upload points to
        for index, outcome in enumerate(outcomes):  # one outcome per file received, in order
            if isinstance(outcome, RefusedFile):
                results.append(outcome)
            elif isinstance(outcome, _Duplicate):
                stored = outcome.existing or by_digest[outcome.file.sha256]
                results.append(StoredFile.of(stored, duplicate=True))
            elif (existing := raced.get(outcome.sha256)) is None:
                record = records[outcome.slot]
                by_digest.setdefault(record.sha256, record)
                results.append(StoredFile.of(record))
            elif policy.dedupe == "reuse":
                results.append(StoredFile.of(existing, duplicate=True))
            else:  # reject, one file at a time (atomic: _commit raised)
                results.append(
                    RefusedFile(
                        outcome.original_filename,
                        _duplicate_error(outcome, existing, index),
                    )
                )
    return results


@dataclass(frozen=True, slots=True)
class _Duplicate:
    """DEDUPE=reuse: ``file`` holds bytes stored already (``existing``), or received earlier in
    this very upload (``existing`` None)."""

    file: ReceivedFile
    existing: FileRecord | None


async def _deduplicate(
    received: Sequence[ReceivedFile | RefusedFile],
    dedupe: Dedupe,
    catalog: Catalog | None,
    *,
    atomic: bool,
    owner: str | None,
) -> list[ReceivedFile | RefusedFile | _Duplicate]:
    files = [r for r in received if isinstance(r, ReceivedFile)]
    if dedupe == "off" or not files:
        return list(received)
    digests = [f.sha256 for f in files]
    stored = await catalog.by_sha256(digests, owner=owner) if catalog is not None else {}
    seen: set[str] = set()
    outcomes: list[ReceivedFile | RefusedFile | _Duplicate] = []
    for index, outcome in enumerate(received):
        if isinstance(outcome, RefusedFile):
            outcomes.append(outcome)
            continue
        existing = stored.get(outcome.sha256)
        if existing is None and outcome.sha256 not in seen:
            seen.add(outcome.sha256)
            outcomes.append(outcome)
        elif dedupe == "reuse":
            outcomes.append(_Duplicate(outcome, existing))
        else:
            error = _duplicate_error(outcome, existing, index)
            if atomic:
                raise error
            outcomes.append(RefusedFile(outcome.original_filename, error))
    return outcomes


def _duplicate_error(file: ReceivedFile, existing: FileRecord | None, index: int) -> DuplicateFile:
    name = file.original_filename
    where = f"as {existing.stored_name!r}" if existing else "earlier in this upload"
    error = DuplicateFile(f"{name!r} is stored already, {where}")
    error.about(name, index)
    return error


def _new_record(file: ReceivedFile, stored_name: str, owner: str | None) -> FileRecord:
    record_id = new_id()
    image = file.image
    return FileRecord(
        id=record_id,
        stored_name=stored_name,
        original_name=file.original_filename,
        size=file.file_size,
        content_type=file.content_type,
        sha256=file.sha256,
        created_at=id_time(record_id),
        owner=owner,
        width=image.width if image else None,
        height=image.height if image else None,
        orientation=image.orientation if image else None,
        metadata_removed=image.metadata_removed if image else False,
    )


async def _settle(
    catalog: Catalog | None,
    records: Mapping[int, FileRecord],
    batch: BatchScope,
    dedupe: Dedupe,
    atomic: bool,
    owner: str | None,
) -> dict[str, FileRecord]:
    """Commit the records of the files just published (``records``, by slot), then seal the
    batch; or withdraw the files: a file is never left without its record, nor a record
    without its file, and a crash before the seal leaves neither (the start-up sweep rolls an
    unsealed batch back). Once begun, this runs to its end even if the caller is cancelled
    (the upload then stays stored, unanswered; or is withdrawn, if a step failed).

    Returns the digests another upload committed since the DEDUPE check (see
    :func:`_commit`), whose files are left out of this one."""

    async def commit_then_seal() -> dict[str, FileRecord]:
        raced: dict[str, FileRecord] = {}
        try:
            if catalog is not None and records:
                raced = await _commit(catalog, list(records.values()), dedupe, atomic, owner)
        except BaseException:
            await batch.withdraw()
            raise
        try:
            if raced:  # the files of bytes stored meanwhile are not part of the upload after all
                await batch.leave_out([n for n, r in records.items() if r.sha256 in raced])
            await batch.seal()
        except BaseException:
            await batch.withdraw()
            if catalog is not None:  # committed: take the records back with their files
                committed = [r.id for r in records.values() if r.sha256 not in raced]
                # If that fails too, the next start's reconciliation drops them (no file).
                with contextlib.suppress(Exception):
                    await catalog.delete(committed)
            raise
        return raced

    return await asyncio.shield(asyncio.ensure_future(commit_then_seal()))


async def _commit(
    catalog: Catalog,
    records: Sequence[FileRecord],
    dedupe: Dedupe,
    atomic: bool,
    owner: str | None,
) -> dict[str, FileRecord]:
    """Commit the records, in one transaction.

    With ``dedupe`` on, the check before receiving may be stale (two uploads of the same new
    bytes at once, in any processes): the commit looks again, under the catalog's lock, and
    returns the digests stored meanwhile, whose records it did not insert. ``reject`` in one
    piece (``atomic``): one of them refuses the whole upload."""
    if dedupe == "off":
        await catalog.add(records)
        return {}
    all_or_none = atomic and dedupe == "reject"
    raced = await catalog.add_unique(records, all_or_none=all_or_none, owner=owner)
    if raced and all_or_none:
        index, first = next((i, r) for i, r in enumerate(records) if r.sha256 in raced)
        name = first.original_name
        error = DuplicateFile(f"{name!r} is stored already, as {raced[first.sha256].stored_name!r}")
        error.about(name, index)
        raise error
    return raced


async def ingest_file(file: IncomingFile, batch: BatchScope, policy: IngestPolicy) -> ReceivedFile:
    """Check one file and stream it into ``batch``: its extension before any byte is read, its
    first bytes against the extension before any byte is written, its size as it grows, and an
    image's structure, pixel count and metadata as its bytes pass
    (:mod:`clustr_aio.images.structure`: one pass, no decode). The sha256 is that of the bytes
    as sent, computed as they pass (:mod:`.hashing`); what is written is the filtered image."""
    hashing = await _receive_file(file, batch, policy)
    await hashing.hasher.hexdigest()
    return hashing.received()


@dataclass(frozen=True, slots=True)
class _Hashing:
    """A file received into the batch and checked, whose sha256 the hashing thread may still be
    computing (every chunk handed over: :meth:`StreamHasher.finish`)."""

    original_filename: str
    file_size: int
    content_type: str
    slot: int
    image: ImageInfo | None
    hasher: StreamHasher

    def received(self) -> ReceivedFile:
        """Once its chunks are hashed (:func:`all_hashed`, or the hasher's ``hexdigest``)."""
        sha256 = self.hasher.result()
        return ReceivedFile(
            self.original_filename, self.file_size, self.content_type, sha256, self.slot, self.image
        )


async def _receive_file(file: IncomingFile, batch: BatchScope, policy: IngestPolicy) -> _Hashing:
    """:func:`ingest_file` without waiting for the digest."""
    filename = file.filename
    extension = allowed_extension(filename, policy.allowed_extensions)  # a nameless file fails
    head_chunks = await _read_head(file.chunks)
    content_type = verify_content(
        extension, _first_bytes(head_chunks, SNIFF_BYTES), filename=filename
    )
    check = image_check(
        content_type, filename, max_pixels=policy.max_image_pixels, strip=policy.strip_metadata
    )

    slot = batch.files
    writer: FileWriter = batch.add_file(safe_name(filename))
    if (
        file.source is not None
        and isinstance(writer, Adopting)
        and isinstance(writer, HeadPatching)
    ):
        writer = InPlaceWriter(writer, file.source, check)
    elif check is not None and not isinstance(writer, HeadPatching):
        writer = _HeldUntilClose(writer)
    hasher = StreamHasher()
    size = 0
    try:
        for chunk in head_chunks:
            size += len(chunk)
            policy.limits.check_file_size(size, filename)
            await _write(writer, check.feed(chunk) if check else (chunk,))
            await hasher.update(chunk)
        # Let go of the head: its chunks are slices of the first read, which they would keep
        # whole in memory for as long as the part lasts (a stalled upload: for good).
        del head_chunks
        async for chunk in file.chunks:
            size += len(chunk)
            policy.limits.check_file_size(size, filename)
            await _write(writer, check.feed(chunk) if check else (chunk,))
            await hasher.update(chunk)
        if check is not None:
            await _write(writer, check.finish())
            if check.patches:
                assert isinstance(writer, HeadPatching)  # made one above
                for offset, data in check.patches:
                    writer.patch(offset, data)
        hasher.finish()
    except ClustrError as error:
        if error.per_file:  # the batch goes on: close the file, which it leaves out
            with contextlib.suppress(Exception):
                await writer.close()
        raise
    finally:
        hasher.release()  # after finish(), nothing; else the thread skips what is left of it
    await writer.close()
    if check is None:
        return _Hashing(filename, size, content_type, slot, None, hasher)
    return _Hashing(filename, check.written, content_type, slot, check.info, hasher)


async def _write(writer: FileWriter, pieces: Sequence[Buffer]) -> None:
    for piece in pieces:
        await writer.write(piece)


class _HeldUntilClose:
    """A writer that cannot patch (:class:`HeadPatching`) made one that can: an image is held
    in memory until its end, then written whole."""

    def __init__(self, writer: FileWriter) -> None:
        self._writer = writer
        self._held: list[bytes] = []
        self._patches: list[tuple[int, bytes]] = []

    async def write(self, data: Buffer) -> None:
        self._held.append(bytes(data))

    def patch(self, offset: int, data: bytes) -> None:
        self._patches.append((offset, data))

    async def close(self) -> None:
        whole = bytearray(b"".join(self._held))
        for offset, data in self._patches:
            whole[offset : offset + len(data)] = data
        await self._writer.write(bytes(whole))
        await self._writer.close()


def allowed_extension(filename: str, allowed: frozenset[str]) -> str:
    """The file's extension, if it is one of ``allowed`` (415 otherwise); public for the
    sources that know a name before its bytes (a resumable upload's creation)."""
    extension = extension_of(filename)
    if extension not in allowed:
        what = f"files of type .{extension}" if extension else "files without an extension"
        listed = ", ".join(sorted(allowed))
        raise UnsupportedFile(f"{filename!r}: {what} are not accepted; allowed: {listed}")
    return extension


async def _read_head(chunks: AsyncIterator[Buffer]) -> list[Buffer]:
    """The first chunks, enough of them to hold ``SNIFF_BYTES`` (fewer at the stream's end)."""
    head: list[Buffer] = []
    have = 0
    while have < SNIFF_BYTES:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        head.append(chunk)
        have += len(chunk)
    return head


def _first_bytes(chunks: Sequence[Buffer], n: int) -> bytes:
    if chunks and len(chunks[0]) >= n:
        return bytes(chunks[0][:n])
    return b"".join(chunks)[:n]
