"""At start-up, make the catalog and the stored files agree again.

Files without a record come from an operator copying files in, or from a restore of the folder
without the database. They are **adopted**: recorded with their name as original name, their
sha256, size and sniffed type, dated by their modification time. A batch killed between its
publish and the commit of its records is not among them: the storage, opened before this runs,
rolled it back (an upload never answered 200 leaves nothing; :mod:`clustr_aio.storage.journal`).

Records without a file (an operator's ``rm``, a restore of the database without the folder, a
batch committed but rolled back because it was killed before its seal) are removed: the
catalog never lists what ``/uploads`` cannot serve.

Of several processes starting at once (``WORKERS=N``), the one that takes the catalog's
maintenance lock reconciles; the others go on without waiting. An upload that a serving
process commits meanwhile wins over an adoption of the same file (:meth:`Catalog.add` replaces,
:meth:`Catalog.adopt` never does).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Final, Protocol

from clustr_aio.catalog.base import Catalog, FileRecord
from clustr_aio.catalog.ids import id_time, new_id
from clustr_aio.domain.errors import StorageUnavailable
from clustr_aio.domain.sniff import OCTET_STREAM, SNIFF_BYTES, detect_type
from clustr_aio.storage.base import Listing, OnDisk, OrphanSweeping, Reading, Storage

__all__ = ["Reconciled", "reconcile", "sweep_orphans"]

log = logging.getLogger("clustr_aio.catalog")
_READ_BLOCK: Final = 1024 * 1024
_CHUNK: Final = 1000
"""Records and files walked at a time."""


@dataclass(frozen=True, slots=True)
class Reconciled:
    adopted: int
    """Files that had no record, recorded now."""
    forgotten: int
    """Records whose file was gone, removed now."""


async def reconcile(catalog: Catalog, storage: Storage) -> Reconciled | None:
    """Reconcile, unless another process is at it (None) or the storage cannot be listed.

    Both sides are walked a chunk at a time, never held whole: a million records and files
    held 400 MB at every start when they were (their names, twice, and the records' ids)."""
    if not isinstance(storage, Listing) or not isinstance(storage, Reading):
        return None
    async with catalog.exclusive() as held:
        if not held:
            log.info("catalog: another process is reconciling it with the stored files")
            return None
        forgotten = await _forget_files_gone(catalog, storage)
        adopted = await _adopt_files_unrecorded(catalog, storage)
    result = Reconciled(adopted=adopted, forgotten=forgotten)
    log.info(
        "catalog reconciled with the stored files: %d files without a record adopted, "
        "%d records without a file removed",
        result.adopted,
        result.forgotten,
    )
    return result


async def _forget_files_gone(catalog: Catalog, storage: Listing) -> int:
    """Remove the records whose file is gone, a page of the catalog at a time. A record's
    file was published before the record was committed, so a file missing now is gone."""
    forgotten = 0
    after = None
    while page := await catalog.stored_names_after(after, _CHUNK):
        after = page[-1][0]
        there = await storage.existing([name for name, _ in page])
        gone = [record_id for name, record_id in page if name not in there]
        if gone:
            forgotten += len(await catalog.delete(gone))
    return forgotten


class _Walkable(Listing, Reading, Protocol):
    """A storage the reconciliation can walk: it lists its files and reads them."""


async def _adopt_files_unrecorded(catalog: Catalog, storage: _Walkable) -> int:
    """Record the files that have no record, a chunk of the folder at a time."""
    adopted = 0
    async for names in storage.names(_CHUNK):
        recorded = await catalog.recorded(names)
        described = [
            record
            for name in sorted(set(names).difference(recorded))
            if (record := await _describe(storage, name)) is not None
        ]
        if described:
            adopted += await catalog.adopt(described)
    return adopted


async def sweep_orphans(catalog: Catalog, storage: Storage) -> object | None:
    """A shared store's reconciliation: the catalog is the source of truth, so objects
    without a record are removed, not adopted (a crashed batch's client got no 200, and
    nobody else was told its names). Safe on every instance at once, and at any time: only
    what is older than the grace of the store is touched. None if the store cannot sweep, or
    cannot be reached (the next sweep tries again)."""
    if not isinstance(storage, OrphanSweeping):
        return None
    try:
        swept = await storage.sweep(catalog.recorded)
    except StorageUnavailable:
        log.warning("catalog: the store is unreachable; orphans are swept next time")
        return None
    log.info("catalog: swept the store: %s", swept)
    return swept


async def _describe(storage: Reading, name: str) -> FileRecord | None:
    location = await storage.locate(name)
    if not isinstance(location, OnDisk):
        return None
    try:
        return await asyncio.to_thread(_describe_file, name, location.path)
    except OSError as error:  # gone since the listing, unreadable: left for the next start
        log.warning("catalog: cannot adopt %r: %s", name, error)
        return None


def _describe_file(name: str, path: str) -> FileRecord:
    digest = hashlib.sha256()
    size = 0
    head = b""
    with open(path, "rb") as file:
        mtime_ms = os.fstat(file.fileno()).st_mtime_ns // 1_000_000
        while block := file.read(_READ_BLOCK):
            if not head:
                head = block[:SNIFF_BYTES]
            digest.update(block)
            size += len(block)
    known = detect_type(head)
    record_id = new_id(mtime_ms)
    return FileRecord(
        id=record_id,
        stored_name=name,
        original_name=name,
        size=size,
        content_type=known.content_type if known else OCTET_STREAM,
        sha256=digest.hexdigest(),
        created_at=id_time(record_id),
    )
