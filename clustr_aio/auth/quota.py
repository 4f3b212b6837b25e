"""Storage quotas: an owner's files may take at most its key's quota, counted in stored file
bytes. An upload reserves bytes in the catalog as they arrive (more at a time as it grows, only
what it needs near the limit), so of uploads racing for an owner's last bytes only one can
have them; the reservation is released once the upload's records are committed (or it
failed). A reservation whose process was killed stops counting when its lease runs out.

A resumable (tus) upload spans requests: it holds one reservation, named after it, for as long
as it lives — its whole ``Upload-Length`` from its creation (or its bytes as they arrive, while
the length is deferred), its lease renewed by each of its requests — released once its file is
catalogued or it is removed.

Before the body: a ``Content-Length`` that cannot fit even with generous room for multipart
framing (:data:`FRAMING_ALLOWANCE`, and 1/64 of the body for many small parts) is refused at
once; otherwise the bytes counted decide, to the byte.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Final

from clustr_aio.catalog.base import Catalog
from clustr_aio.domain.errors import QuotaExceeded
from clustr_aio.ingest.pipeline import IncomingFile
from clustr_aio.storage.base import Buffer

__all__ = ["FRAMING_ALLOWANCE", "QuotaMeter"]

FRAMING_ALLOWANCE: Final = 64 * 1024
_STEP: Final = 1024 * 1024
"""The least a reservation grows by: one catalog write per MiB at most, fewer as it doubles."""
_LEASE: Final = timedelta(minutes=10)


class QuotaMeter:
    """One upload's reservation against its owner's quota."""

    def __init__(
        self,
        catalog: Catalog,
        owner: str,
        quota: int,
        *,
        reservation: str | None = None,
        lease: timedelta = _LEASE,
        kept: str = "nothing of this upload was kept",
    ) -> None:
        """``reservation``: its id, for one that outlives the request (a resumable upload's,
        under ``lease``: renewed by each of its requests); ``kept``: what a refusal says was
        kept."""
        self._catalog = catalog
        self.owner = owner
        self.quota = quota
        self._id = reservation or uuid.uuid4().hex
        self._lease = lease
        self._kept = kept
        self._reserved = 0
        self._counted = 0
        self._renew_at = 0.0

    async def check_declared_length(self, content_length: int | None) -> None:
        """Refuse before the body when its declared length alone is clearly over the room."""
        if content_length is None:
            return
        room = self.quota - await self._catalog.usage(self.owner)
        if content_length > room + FRAMING_ALLOWANCE + content_length // 64:
            raise self._exceeded(room, content_length)

    async def reserve(self, size: int) -> None:
        """Hold ``size`` bytes at once (a resumable upload's declared length), or refuse
        before any of them is received."""
        granted = await self._catalog.reserve(
            self._id, self.owner, need=size, want=size, quota=self.quota, lease=self._until()
        )
        if granted is None:
            raise self._exceeded(self.quota - await self._catalog.usage(self.owner), size)
        self._reserved = granted
        self._renew_at = time.monotonic() + self._lease.total_seconds() / 2

    def counted_after(self, start: int, chunks: AsyncIterator[Buffer]) -> AsyncIterator[Buffer]:
        """``chunks`` counted, and reserved, after ``start`` bytes the reservation already
        holds (a resumable upload of a length still unknown: its next request)."""
        self._counted = max(self._counted, start)
        return self._counted_chunks(chunks)

    def metered(self, files: AsyncIterable[IncomingFile]) -> AsyncIterator[IncomingFile]:
        """``files`` whose chunks are counted, and reserved, as the pipeline reads them."""

        async def each() -> AsyncIterator[IncomingFile]:
            async for incoming in files:
                yield IncomingFile(incoming.filename, self._counted_chunks(incoming.chunks))

        return each()

    async def _counted_chunks(self, chunks: AsyncIterator[Buffer]) -> AsyncIterator[Buffer]:
        async for chunk in chunks:
            self._counted += len(chunk)
            if self._counted > self._reserved or time.monotonic() > self._renew_at:
                await self._grow()
            yield chunk

    async def _grow(self) -> None:
        # Ahead of the bytes while there is room for that; within a step of the quota the
        # catalog grants only what is needed, so a racing upload is refused only when the
        # bytes truly do not fit.
        need = max(self._counted, self._reserved)
        granted = await self._catalog.reserve(
            self._id,
            self.owner,
            need=need,
            want=need + max(_STEP, self._reserved),
            quota=self.quota,
            lease=self._until(),
        )
        if granted is None:
            raise self._exceeded(self.quota - await self._catalog.usage(self.owner), need)
        self._reserved = granted
        self._renew_at = time.monotonic() + self._lease.total_seconds() / 2

    def _until(self) -> datetime:
        return datetime.now(UTC) + self._lease

    async def release(self) -> None:
        if self._reserved:
            await self._catalog.release(self._id)
            self._reserved = 0

    def _exceeded(self, room: int, size: int) -> QuotaExceeded:
        return QuotaExceeded(
            f"storage quota exceeded: owner {self.owner!r} may store {self.quota} bytes and has"
            f" {max(room, 0)} left, not enough for {size} bytes; {self._kept}"
        )
