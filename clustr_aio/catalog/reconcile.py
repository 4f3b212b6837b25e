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
from typing import Final

from clustr_aio.catalog.base import Catalog, FileRecord
from clustr_aio.catalog.ids import id_time, new_id
from clustr_aio.domain.errors import StorageUnavailable
from clustr_aio.domain.sniff import OCTET_STREAM, SNIFF_BYTES, detect_type
from clustr_aio.storage.base import Listing, OnDisk, OrphanSweeping, Reading, Storage

__all__ = ["Reconciled", "reconcile", "sweep_orphans"]

log = logging.getLogger("clustr_aio.catalog")
_READ_BLOCK: Final = 1024 * 1024
_ADOPT_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class Reconciled:
    adopted: int
    """Files that had no record, recorded now."""
    forgotten: int
    """Records whose file was gone, removed now."""


async def reconcile(catalog: Catalog, storage: Storage) -> Reconciled | None:
    """Reconcile, unless another process is at it (None) or the storage cannot be listed."""
    if not isinstance(storage, Listing) or not isinstance(storage, Reading):
        return None
    async with catalog.exclusive() as held:
        if not held:
            log.info("catalog: another process is reconciling it with the stored files")
            return None
        on_disk = set(await storage.names())
        recorded = await catalog.stored_names()
        gone = [name for name in recorded if name not in on_disk]
        # Checked once more, one by one: a file published since the listing has its record.
        still_gone = [name for name in gone if not await _exists(storage, name)]
        forgotten = await catalog.delete([recorded[name] for name in still_gone])
        adopted = 0
        unrecorded = sorted(on_disk.difference(recorded))
        for start in range(0, len(unrecorded), _ADOPT_BATCH):
            described = [
                record
                for name in unrecorded[start : start + _ADOPT_BATCH]
                if (record := await _describe(storage, name)) is not None
            ]
            adopted += await catalog.adopt(described)
    result = Reconciled(adopted=adopted, forgotten=len(forgotten))
    log.info(
        "catalog reconciled with the stored files: %d files without a record adopted, "
        "%d records without a file removed",
        result.adopted,
        result.forgotten,
    )
    return result


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


async def _exists(storage: Reading, name: str) -> bool:
    location = await storage.locate(name)
    if not isinstance(location, OnDisk):
        return True  # not ours to check: keep the record
    return await asyncio.to_thread(os.path.isfile, location.path)


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
