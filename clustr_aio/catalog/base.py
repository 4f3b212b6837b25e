"""The catalog interface every backend implements (embedded SQLite, PostgreSQL). It knows no
HTTP: records in, records out.

Every record's id is a UUIDv7 (:mod:`.ids`): pages are keyset pages over the id alone, so a
record added or removed between two pages never shifts the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

__all__ = ["Catalog", "FileRecord", "Order"]

Order = Literal["newest", "oldest"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FileRecord:
    """One stored file."""

    id: str
    stored_name: str
    """Its name in the storage, unique: at most one record per stored file."""
    original_name: str
    size: int
    content_type: str
    sha256: str
    """Hex digest of the bytes the client sent (the bytes stored, unless metadata was removed
    from an image: :attr:`metadata_removed`)."""
    created_at: datetime
    """UTC, to the microsecond at most; the id's time."""
    width: int | None = None
    """An image's width as displayed (its EXIF orientation applied); None for other files and
    for files adopted by the reconciliation."""
    height: int | None = None
    orientation: int | None = None
    """EXIF orientation 1-8 of an image (1 when it has none)."""
    metadata_removed: bool = False
    """Metadata was removed from the image (STRIP_METADATA): ``size`` is what is stored."""
    owner: str | None = None


class Catalog(Protocol):
    async def add(self, records: Sequence[FileRecord]) -> None:
        """Insert ``records`` in one transaction: all of them, or (raising) none. A record
        whose stored name is already catalogued replaces that record (the start-up
        reconciliation may have adopted the file between its link and this commit)."""

    async def adopt(self, records: Sequence[FileRecord]) -> int:
        """Insert the records whose stored name is not catalogued yet; how many were."""

    async def get(self, record_id: str) -> FileRecord | None: ...

    async def page(
        self, *, limit: int, after: str | None, order: Order, content_type: str | None
    ) -> list[FileRecord]:
        """Up to ``limit`` records in id order (``newest``: descending), those after the id
        ``after`` only, of one content type only when ``content_type`` is given."""

    async def by_sha256(self, digests: Sequence[str]) -> dict[str, FileRecord]:
        """For each digest that is stored, its oldest record."""

    async def delete(self, record_ids: Sequence[str]) -> list[FileRecord]:
        """Remove these records; the ones that existed, in no particular order."""

    async def stored_names(self) -> dict[str, str]:
        """Every record's stored name and id (for the start-up reconciliation)."""

    def exclusive(self) -> AbstractAsyncContextManager[bool]:
        """Whether this process holds the catalog's maintenance lock while inside (it does not
        wait: False when another process holds it). One process of several reconciles."""

    async def close(self) -> None: ...
