"""The catalog interface every backend implements (embedded SQLite, PostgreSQL). It knows no
HTTP: records in, records out.

Every record's id is a UUIDv7 (:mod:`.ids`): pages are keyset pages over the id alone, so a
record added or removed between two pages never shifts the others.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

__all__ = [
    "KEY_DIGITS",
    "SHA256_AT",
    "Catalog",
    "FileRecord",
    "KeyRecord",
    "Order",
    "Row",
    "digest_key",
    "row_record",
]

Order = Literal["newest", "oldest"]

KEY_DIGITS: Final = 15
"""Hex digits of a sha256 in its key (:func:`digest_key`)."""


def digest_key(digest: str) -> int:
    """What the catalogs index a hex sha256 by: its first 60 bits, a non-negative 64-bit
    integer. An index entry of 8 bytes instead of 64 holds twice the entries per page; the
    records found by key are then told apart by their whole digest (for digests that are not
    made to collide, 60 bits leave one in 10^18 pairs sharing a key)."""
    return int(digest[:KEY_DIGITS], 16)


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
    """The owner of the API key that stored it (AUTH=keys); None for files stored in the open
    mode or adopted at start-up, which only admins see then."""


class Row(Protocol):
    """A database row, read by position (sqlite3's tuple, asyncpg's Record)."""

    def __getitem__(self, index: int, /) -> Any: ...


SHA256_AT: Final = 5
"""Where the digest is among the file columns (see :func:`row_record`)."""


def row_record(
    row: Row, *, record_id: str, created_at: datetime, metadata_removed: bool
) -> FileRecord:
    """A row of the file columns as both catalogs select them, in their one order (id,
    stored_name, original_name, size, content_type, sha256, created, width, height, owner,
    orientation, metadata_removed), read by position: a page of 100 reads 1,200 fields. The
    id, the time and the flag come converted by the backend."""
    return FileRecord(
        id=record_id,
        stored_name=row[1],
        original_name=row[2],
        size=row[3],
        content_type=row[4],
        sha256=row[SHA256_AT],
        created_at=created_at,
        width=row[7],
        height=row[8],
        owner=row[9],
        orientation=row[10],
        metadata_removed=metadata_removed,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyRecord:
    """One API key, as the catalog keeps it: never the key itself, only its hash."""

    name: str
    key_hash: str
    """Hex SHA-256 of the key (a key is 256 random bits: no salt or slow hash needed)."""
    scopes: frozenset[str]
    owner: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    quota: int | None = None
    """Bytes the owner may store in all, when this key uploads; None: no quota."""


class Catalog(Protocol):
    async def add(self, records: Sequence[FileRecord]) -> None:
        """Insert ``records`` in one transaction: all of them, or (raising) none. A record
        whose stored name is already catalogued replaces that record (the start-up
        reconciliation may have adopted the file between its link and this commit)."""

    async def add_unique(
        self, records: Sequence[FileRecord], *, all_or_none: bool, owner: str | None = None
    ) -> dict[str, FileRecord]:
        """``add`` for ``DEDUPE``: in one transaction, serialised with every other
        ``add_unique`` of the same digests (in any process), insert the records whose sha256
        is not catalogued yet (among ``owner``'s records, when given, as ``by_sha256``); for
        each that is (another upload of the same bytes got there first), its oldest record,
        the record given is not inserted. With ``all_or_none``, one such digest means nothing
        is inserted. The records' digests are distinct."""

    async def adopt(self, records: Sequence[FileRecord]) -> int:
        """Insert the records whose stored name is not catalogued yet; how many were."""

    # Every query about files takes ``owner``: given, only that owner's records exist for it
    # (another owner's record is not found, as if it did not exist); None, every record.

    async def get(self, record_id: str, *, owner: str | None = None) -> FileRecord | None: ...

    async def get_many(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        """The records of these ids that exist, in no particular order: one query, not one
        per id (a bulk delete of 1,000)."""

    async def page(
        self,
        *,
        limit: int,
        after: str | None,
        order: Order,
        content_type: str | None,
        owner: str | None = None,
    ) -> list[FileRecord]:
        """Up to ``limit`` records in id order (``newest``: descending), those after the id
        ``after`` only, of one content type only when ``content_type`` is given."""

    async def by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, FileRecord]:
        """For each digest that is stored, its oldest record."""

    async def ids_by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, str]:
        """:meth:`by_sha256`'s ids alone, for ``POST /api/files/check``: two columns read of
        each record found instead of twelve, and no records made (for 10,000 digests, a
        tenth of them stored, those 1,000 records were a fifth of PostgreSQL's check)."""

    async def delete(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        """Remove these records; the ones that existed, in no particular order."""

    # -- API keys ----------------------------------------------------------------------------

    async def add_key(self, key: KeyRecord) -> bool:
        """Store a new key; False (and nothing stored) when its name is taken."""

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, revoked keys being gone: a revocation in one process is
        seen at once by all."""

    def keys_generation(self) -> int | None:
        """A number that every revocation (in any process) changes, read without I/O, so that
        keys found by :meth:`key_by_hash` may be kept while it stays the same (read it before
        the look-up); None when this catalog cannot tell cheaply, or while a revocation is
        under way: then nothing may be kept, and every request looks its key up."""

    async def keys(self) -> list[KeyRecord]:
        """Every key, by name."""

    async def revoke_key(self, name: str) -> bool:
        """Delete the key; whether there was one."""

    async def touch_key(self, name: str, when: datetime) -> None:
        """Note when the key was last used."""

    # -- quotas ------------------------------------------------------------------------------

    async def usage(self, owner: str) -> int:
        """Bytes the owner's files take, plus what its uploads in flight have reserved."""

    async def reserve(
        self, reservation: str, owner: str, *, need: int, want: int, quota: int, lease: datetime
    ) -> int | None:
        """Set reservation ``reservation`` of ``owner`` to ``want`` bytes if the owner's usage
        (files, and its other live reservations) leaves room under ``quota``, else to ``need``
        if that fits; the bytes now reserved, or None (the reservation unchanged) when not
        even ``need`` fits. Reservations are serialised per owner: of uploads racing for the
        last bytes, one gets them. ``lease``: when the reservation stops counting if it is
        neither renewed nor released (its process was killed)."""

    async def release(self, reservation: str) -> None:
        """Drop the reservation (its upload ended: its files, if any, are committed)."""

    async def stored_names_after(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` records' (stored name, id), in stored-name order, those after the
        name ``after`` only (a keyset page): the start-up reconciliation walks the catalog
        with it, a page at a time."""

    async def check(self) -> None:
        """Raise :class:`~clustr_aio.domain.errors.CatalogUnavailable` if the catalog cannot
        answer a query right now (for ``/readyz``)."""

    async def recorded(self, stored_names: Collection[str]) -> set[str]:
        """Which of ``stored_names`` have a record (a shared store serves only those)."""

    def exclusive(self) -> AbstractAsyncContextManager[bool]:
        """Whether this process holds the catalog's maintenance lock while inside (it does not
        wait: False when another process holds it). One process of several reconciles."""

    async def close(self) -> None: ...
