"""The storage interface every backend implements (local folder now; S3-compatible later).

The core is deliberately small, in the manner of tusd's ``DataStore``: one request's files are
received into an :class:`UploadBatch` and then published all together or discarded all together.
Optional capabilities (listing, deleting, serving, free-space checks…) are separate protocols
that a backend may also implement, so adding one never forces every backend to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

Buffer = bytes | memoryview


class FileWriter(Protocol):
    """One file being received. Writes may be buffered and complete in the background: errors
    surface from a later :meth:`write`, from :meth:`close` or from :meth:`UploadBatch.publish`."""

    async def write(self, data: Buffer) -> None: ...

    async def close(self) -> None:
        """No more data will come for this file."""


@runtime_checkable
class HeadPatching(Protocol):
    """Optional capability of a :class:`FileWriter`: bytes already written are overwritten in
    place before the file is closed. A filter that learns a header field only at the end (a
    WebP's RIFF size after metadata chunks were removed) can then stream the rest: no whole
    file in memory. Without it the ingest pipeline holds such a file until its end."""

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite ``len(data)`` bytes at ``offset`` (already written) when the file is
        closed; call before :meth:`FileWriter.close`."""


@runtime_checkable
class Adopting(Protocol):
    """Optional capability of a :class:`FileWriter`: the file's first bytes are another local
    file's, which already holds them (a resumable upload's data), so they need not be written
    again. Only the bytes after them are written; a file that is that other file whole (nothing
    written, nothing patched) becomes a hard link of it."""

    def adopt(self, source: str, length: int) -> None:
        """The file's first ``length`` bytes are ``source``'s, complete by the time the file is
        closed; call before any write. ``source`` is never changed through this file."""


class UploadBatch(Protocol):
    """The files of one upload. Nothing of it is visible to readers until :meth:`publish`, and
    nothing of it survives a crash until :meth:`seal`."""

    def add_file(self, desired_name: str) -> FileWriter:
        """Start receiving a file that should be stored as ``desired_name`` (already safe)."""

    async def leave_out(self, slots: Collection[int]) -> None:
        """Files not to store after all, by their positions in the order of :meth:`add_file`
        (refused in an upload that keeps the others, duplicates): not published, or, after
        :meth:`publish` and before :meth:`seal`, withdrawn. Their bytes may be removed after
        this returns (in the background)."""

    async def publish(self) -> list[str]:
        """Make every closed file that is not left out visible, atomically per file and never
        overwriting: a taken name gets a numbered alternative. Returns their stored names in
        the order the files were added. On failure nothing of the batch stays visible."""

    async def seal(self) -> None:
        """The caller's own commit (the catalog's records) is done: the publish is final. A
        crash before this leaves nothing of the batch visible once the storage is opened
        again; after it, every file published stays."""

    async def discard(self) -> None:
        """Forget every file of the batch, published ones included: a caller that discards
        after publish() (say, cancelled while it ran, or its commit failed) withdraws the whole
        upload. Safe to call at any point, more than once; a sealed batch stays as it is."""


class Storage(Protocol):
    """The core capability: receive batches of files."""

    def batch(self) -> UploadBatch: ...


@runtime_checkable
class SpaceReporting(Protocol):
    """Optional capability: how many bytes can still be stored, and a reserve to keep free."""

    async def free_space(self) -> int: ...

    async def ensure_room(self, incoming: int | None = None) -> None:
        """Raise :class:`~clustr_aio.domain.errors.InsufficientStorage` if storing ``incoming`` more
        bytes (None: an unknown amount) would leave less than the backend's reserve free."""


@runtime_checkable
class ReadinessReporting(Protocol):
    """Optional capability: whether files can be stored right now."""

    async def check_writable(self) -> None:
        """Raise ``OSError`` if a file cannot be created and published at the moment."""


@dataclass(frozen=True, slots=True)
class OnDisk:
    """A stored file's bytes are this regular file on this machine: serve it with sendfile."""

    path: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """A stored file's bytes are at this URL (a short-lived presigned one, say): send the
    client there."""

    url: str


@dataclass(frozen=True, slots=True)
class ReadConditions:
    """A read's range and preconditions, as the client sent them (HTTP header values)."""

    range: str | None = None
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None


@dataclass(kw_only=True, slots=True)
class RemoteObject:
    """What a remote store answered a read: ``status`` in HTTP's terms (200, 206, 304, 404,
    412, 416), and for 200/206 the bytes as they come (``release`` them when not read to the
    end)."""

    status: int
    size: int | None = None
    """Bytes in ``chunks`` (the range's, for a 206)."""
    etag: str | None = None
    last_modified: datetime | None = None
    content_range: str | None = None
    chunks: AsyncIterator[bytes] | None = None
    release: Callable[[], None] | None = None


class RemoteReading(Protocol):
    async def fetch(self, name: str, conditions: ReadConditions) -> RemoteObject: ...


@dataclass(frozen=True, slots=True)
class Proxied:
    """A stored file's bytes are in a store clients cannot reach: this process reads them
    (``source.fetch``) and streams them through."""

    name: str
    source: RemoteReading


StoredLocation = OnDisk | Redirect | Proxied
"""Where a client can read a stored file's bytes; one more variant per way of serving.
:class:`OnDisk` is this machine's: what is there is served. The others are a store's that
other processes write to as well, which may hold an object before its upload is committed (or
after a crash, without a record ever): those are served only when the catalog has a record."""


@runtime_checkable
class Reading(Protocol):
    """Optional capability: stored files can be read back by name (``GET /uploads/{name}``)."""

    async def locate(self, name: str) -> StoredLocation | None:
        """Where the stored file ``name`` can be read; None for a name no stored file can
        have (a dot-name, a path, an empty name). A location may still turn out to hold nothing
        (a file never stored there, or deleted since): that is for the reader to find out."""


@runtime_checkable
class Listing(Protocol):
    """Optional capability: the names of every published file, and which names are published
    files (the catalog's start-up reconciliation compares them with its records a chunk at a
    time: a million files cost it a chunk's memory, not a million names')."""

    def names(self, chunk: int) -> AsyncIterator[list[str]]:
        """Every published file's name, up to ``chunk`` at a time, in no particular order."""
        ...

    async def existing(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are published files."""
        ...


@runtime_checkable
class Downloading(Protocol):
    """Optional capability of a store elsewhere: a stored file's bytes copied to this machine
    (a thumbnail is rendered from a local file)."""

    async def download(self, name: str, target: Path) -> None:
        """Write the stored file ``name`` to the new file ``target`` (its folder is made)."""


@dataclass(frozen=True, slots=True)
class DerivedFile:
    """A small file made from a stored one, as a shared store holds it."""

    data: bytes
    content_type: str


@runtime_checkable
class DerivedStoring(Protocol):
    """Optional capability of a store every instance shares: small files made from a stored
    file (its thumbnails, or the note that it cannot be rendered) kept beside it, so that what
    one instance made every instance finds. They are deleted with the file (:class:`Deleting`)
    and never served as stored files."""

    async def get_derived(self, name: str, variant: str) -> DerivedFile | None:
        """The derived file ``variant`` (a relative path) of the stored file ``name``; None
        when none was stored."""

    async def put_derived(self, name: str, variant: str, data: bytes, content_type: str) -> bool:
        """Store it unless it is there already (a conditional write, so any number of
        instances may race to store the same one); False when another was first."""


@runtime_checkable
class Deleting(Protocol):
    """Optional capability: remove published files."""

    async def delete(self, names: Sequence[str]) -> None:
        """Remove the stored files ``names`` that exist, and what was derived from them: gone
        from the store (and from ``/uploads``) when this returns. All of them at once, as the
        store allows (one flush of the folder; a request per 1,000 objects)."""


@runtime_checkable
class OrphanSweeping(Protocol):
    """Optional capability of a store shared by many processes: objects without a record are
    removed (not adopted: the catalog is the source of truth), once old enough that no upload
    in flight can own them."""

    async def sweep(self, recorded: Callable[[Collection[str]], Awaitable[set[str]]]) -> object:
        """Remove orphans; ``recorded(names)`` answers which of ``names`` have a record."""


class BatchScope:
    """``async with BatchScope(storage.batch()) as batch:`` — the batch is discarded unless it
    was published, even when the surrounding task is cancelled (client gone, server stopping).
    Once published, the caller's commit owns it: :meth:`seal` or :meth:`withdraw`."""

    def __init__(self, batch: UploadBatch) -> None:
        self._batch = batch
        self._published: Sequence[str] | None = None
        self.files = 0
        """How many files were added."""

    async def __aenter__(self) -> Self:
        return self

    def add_file(self, desired_name: str) -> FileWriter:
        self.files += 1
        return self._batch.add_file(desired_name)

    async def leave_out(self, slots: Collection[int]) -> None:
        await self._batch.leave_out(slots)

    async def withdraw(self) -> None:
        """Discard the batch, published files included (a step after publishing failed)."""
        await asyncio.shield(self._batch.discard())

    async def publish(self) -> list[str]:
        names = await self._batch.publish()
        self._published = names
        return names

    async def seal(self) -> None:
        await self._batch.seal()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._published is None:
            # Shielded: a second cancellation must not leave temp files behind.
            await asyncio.shield(self._batch.discard())
