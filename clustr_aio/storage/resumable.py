"""The resumable-upload capability: uploads received over many requests, and their state.

What tusd calls a ``DataStore`` plus its ``Locker``, kept apart from the tus protocol
(:mod:`clustr_aio.tus`), which knows nothing of files, and from the batch interface of
:mod:`.base`: a finished resumable upload is read back (:meth:`ResumableStore.read`) and goes
through the ingest pipeline like any multipart part. A backend offers the capability by
implementing :class:`Resumable`; one that does not (yet) is simply without ``/api/tus/``.

The core is small: create, look up, hold (lock) one upload to append to it or remove it, read it
back, list every upload (the expiry sweeper's walk). Offsets are durable once
:meth:`HeldUpload.commit` returns: the state survives the process (and, with fsync, the machine),
so a restart resumes every upload.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, Self, runtime_checkable

from clustr_aio.storage.base import Buffer

__all__ = ["Digest", "HeldUpload", "Resumable", "ResumableStore", "UploadInfo"]


class Digest(Protocol):
    """A running hash (``hashlib.new(name)``): what a checksum is computed with."""

    def update(self, data: Buffer, /) -> None: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadInfo:
    """What is known of one resumable upload; its bytes are the store's business."""

    id: str
    length: int | None
    """Its size in bytes; None while the client defers it (creation-defer-length)."""
    offset: int = 0
    """Bytes received and committed: durable, never to be sent again."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The client's Upload-Metadata, decoded and sanitised (``filename`` among them)."""
    created_at: float
    expires_at: float
    """Unix time after which the upload is gone (410, then 404 once swept)."""
    partial: bool = False
    """A part of a concatenation: never published on its own."""
    parts: tuple[str, ...] = ()
    """A final upload: the ids of its partial uploads, in order. Its bytes are theirs."""
    file_id: str | None = None
    """Once published: the catalog id of the stored file (``GET /api/files/{id}``)."""
    owner: str | None = None
    """AUTH=keys: the owner of the key that created it (only that owner's, or an admin's,
    requests find it); its stored file is that owner's. None in the open mode."""
    quota: int | None = None
    """The creating key's quota, which its bytes are reserved against while it lasts."""

    @property
    def final(self) -> bool:
        return bool(self.parts)

    @property
    def received_all(self) -> bool:
        return self.length is not None and self.offset >= self.length

    def with_changes(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "parts": list(self.parts)}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        data = json.loads(raw)
        data["parts"] = tuple(data.get("parts", ()))
        return cls(**data)


class HeldUpload(Protocol):
    """One upload, locked against every other request (in any process) while it is held."""

    info: UploadInfo
    """As committed, read once the lock was taken."""
    written: int
    """Bytes appended since the last commit (handed to the store, not yet durable)."""

    async def append(self, chunks: AsyncIterator[Buffer], *, digest: Digest | None = None) -> None:
        """Write ``chunks`` after the committed offset, updating ``digest`` with them. When the
        stream fails midway, what it delivered is written (and counted) before the error is
        raised again, so the caller may still commit it."""

    async def commit(self, info: UploadInfo, *, release_data: bool = False) -> None:
        """Make the appended bytes, then ``info``, durable (the new offset among them); with
        ``release_data``, then :meth:`release_data` (in the same trip to the disk)."""

    async def rollback(self) -> None:
        """Forget the bytes appended since the last commit (a checksum that did not match)."""

    async def release_data(self) -> None:
        """Free the bytes of an upload that was published (its state stays until it expires,
        for HEADs to find the stored file)."""

    async def remove(self) -> None:
        """Forget the upload: its bytes and its state."""


class ResumableStore(Protocol):
    """Uploads that span requests (and restarts)."""

    async def create(self, info: UploadInfo) -> None: ...

    def create_held(self, info: UploadInfo) -> AbstractAsyncContextManager[HeldUpload]:
        """:meth:`create`, the new upload held for the block (creation-with-upload: its first
        chunk follows), in one trip to the store."""

    async def get(self, upload_id: str) -> UploadInfo | None:
        """Its committed state; None for an id no upload has (or had: removed ones)."""

    def hold(self, upload_id: str) -> AbstractAsyncContextManager[HeldUpload]:
        """Lock the upload for the block. Raises :class:`~clustr_aio.domain.errors.UploadLocked`
        at once when another request holds it, ``UploadNotFound`` when there is none. A lock
        dies with the request's process, or when the request ends (a broken connection too)."""

    def read(self, upload_id: str, size: int) -> AsyncIterator[Buffer]:
        """The first ``size`` bytes of an upload, in blocks (its whole, once received)."""

    async def head(self, upload_id: str, size: int) -> bytes:
        """Up to ``size`` of the upload's first committed bytes (for the magic-bytes check)."""

    async def refer(self, partial_id: str, final_id: str) -> None:
        """Note that the final upload ``final_id`` concatenates ``partial_id``."""

    async def finals_of(self, partial_id: str) -> list[str]:
        """The final uploads noted for ``partial_id`` (:meth:`refer`)."""

    async def ids(self) -> list[str]:
        """Every upload the store holds, in no order (the expiry sweeper walks them)."""

    async def sweep_orphans(self, older_than: float) -> int:
        """Remove data left without state (a crash during a creation) before that Unix time."""


@runtime_checkable
class LocalData(Protocol):
    """Optional capability of a :class:`ResumableStore`: an upload's bytes are a regular file
    on this machine, which a finished upload's stored file can be made of (adopted, see
    :class:`~clustr_aio.storage.base.Adopting`) instead of being written again. The store
    never changes the bytes of a data file that has another name (it copies what it keeps)."""

    def data_path(self, upload_id: str) -> str: ...


@runtime_checkable
class Resumable(Protocol):
    """Optional storage capability: resumable uploads are kept beside the stored files."""

    def resumable_uploads(self) -> ResumableStore: ...
