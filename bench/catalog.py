"""The catalog's figures (issue 11): a page of 100 from a catalog of 1,000,000 records, p50 and
p99, and a check of 10,000 hashes, each timed server side: what the handler does (``GET
/api/files``: the catalog query and the JSON answer; ``POST /api/files/check``: the body's
validation too), in this process, with no HTTP around it.

``python -m bench.catalog`` prints them for SQLite (a fresh file under bench/data) and, with
``BENCH_DATABASE_URL=postgresql://…``, for PostgreSQL; ``make bench`` has them as scenarios K
(page p99 against the 20 ms budget) and K2 (check against 100 ms).

Pages are asked from random places (a cursor made from a random stored id), newest and oldest
first, a tenth of them filtered by content type, as a client scrolling anywhere would ask.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clustr_aio.catalog.base import Catalog, FileRecord, Order
from clustr_aio.catalog.postgres import PostgresCatalog
from clustr_aio.catalog.sqlite import SqliteCatalog
from clustr_aio.web import bodies
from clustr_aio.web.links import FileLinks
from clustr_aio.web.responses import json_bytes
from clustr_aio.web.routes.files import check_digests, encode_cursor
from clustr_aio.web.routes.upload import ItemUrls, file_item

__all__ = ["CatalogFigures", "measure", "open_filled"]

RECORDS = int(os.environ.get("BENCH_CATALOG_RECORDS", "1000000"))
PAGES = 400
CHECK_HASHES = 10_000
CHECK_ROUNDS = 20
_INSERT_BATCH = 10_000
_TYPES = ("image/jpeg", "image/png", "image/webp")
_URLS = ItemUrls(FileLinks("http://127.0.0.1:5000", "/uploads", secrets=(), ttl=3600), (256, 1024))


@dataclass(frozen=True, slots=True)
class CatalogFigures:
    page_p50_ms: float
    page_p99_ms: float
    check_p50_ms: float
    check_max_ms: float


def _id_at(ms: int, n: int) -> str:
    value = (ms << 80) | (0x7 << 76) | ((n & 0xFFF) << 64) | (0b10 << 62) | n
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _records(start: int, count: int) -> list[FileRecord]:
    base_ms = 1_700_000_000_000
    records = []
    for n in range(start, start + count):
        ms = base_ms + n  # one a millisecond: a million over 17 minutes
        records.append(
            FileRecord(
                id=_id_at(ms, n),
                stored_name=f"photo-{n}.jpg",
                original_name=f"IMG_{n:07d}.JPG",
                size=400_000 + n % 200_000,
                content_type=_TYPES[(n % 10 == 0 and 1) or 0] if n % 7 else _TYPES[2],
                sha256=hashlib.sha256(n.to_bytes(8, "big")).hexdigest(),
                created_at=datetime.fromtimestamp(ms / 1000, UTC),
            )
        )
    return records


async def open_filled(catalog: SqliteCatalog | PostgresCatalog, records: int) -> Catalog:
    """``catalog``, opened, holding ``records`` records (filled once: kept between runs)."""
    await catalog.open()
    have = await _count(catalog)
    for start in range(have, records, _INSERT_BATCH):
        await catalog.add(_records(start, min(_INSERT_BATCH, records - start)))
    if have < records and isinstance(catalog, PostgresCatalog):
        # What autovacuum does to a table just filled, done before the timing instead of
        # during it: after the million inserts it reads the whole table (and sets its
        # visibility map) within a minute or so, which was while the figures were taken.
        await catalog.pool.execute("VACUUM (ANALYZE) files")
    return catalog


async def _count(catalog: SqliteCatalog | PostgresCatalog) -> int:
    if isinstance(catalog, PostgresCatalog):
        count: int = await catalog.pool.fetchval("SELECT count(*) FROM files")
        return count
    return await catalog._read(  # the reader pool, as every query
        lambda: catalog._reader().execute("SELECT count(*) FROM files").fetchone()[0]
    )


async def _page(catalog: Catalog, after: str | None, order: Order, content_type: str | None) -> int:
    """What GET /api/files does, but the HTTP: query, items, JSON."""
    rows = await catalog.page(limit=101, after=after, order=order, content_type=content_type)
    page = rows[:100]
    body = {
        "data": [file_item(_URLS, r) for r in page],
        "next_cursor": encode_cursor(order, page[-1].id) if len(rows) > 100 else None,
    }
    return len(json_bytes(body))


async def _check(catalog: Catalog, body: bytes) -> int:
    """What POST /api/files/check does with the body it read, but the HTTP."""
    digests = bodies.validated(body, bodies.CHECK_REQUEST)["sha256"]
    return len(await check_digests(catalog, digests, owner=None))


async def measure(catalog: Catalog, records: int, *, seed: int = 11) -> CatalogFigures:
    rng = random.Random(seed)
    timings: list[float] = []
    for n in range(PAGES):
        order: Order = "newest" if n % 2 else "oldest"
        content_type = _TYPES[1] if n % 10 == 0 else None
        after = _id_at(1_700_000_000_000 + (k := rng.randrange(records)), k) if n % 20 else None
        started = time.perf_counter()
        await _page(catalog, after, order, content_type)
        timings.append(time.perf_counter() - started)
    checks: list[float] = []
    for _ in range(CHECK_ROUNDS):
        # A tenth of them stored, the rest new: a client about to send 10,000 photos.
        known = [
            hashlib.sha256(rng.randrange(records).to_bytes(8, "big")).hexdigest()
            for _ in range(CHECK_HASHES // 10)
        ]
        unknown = [rng.randbytes(32).hex() for _ in range(CHECK_HASHES - len(known))]
        digests = known + unknown
        rng.shuffle(digests)
        body = json_bytes({"sha256": digests})  # the client's
        started = time.perf_counter()
        await _check(catalog, body)
        checks.append(time.perf_counter() - started)
    cuts = statistics.quantiles(timings, n=100)
    return CatalogFigures(
        page_p50_ms=statistics.median(timings) * 1e3,
        page_p99_ms=cuts[98] * 1e3,
        check_p50_ms=statistics.median(checks) * 1e3,
        check_max_ms=max(checks) * 1e3,
    )


async def figures(backend: str, where: str, records: int = RECORDS) -> CatalogFigures:
    catalog = (
        PostgresCatalog(where)
        if backend == "postgresql"
        else SqliteCatalog(Path(where), durable=False)
    )
    started = time.perf_counter()
    await open_filled(catalog, records)
    print(
        f"{backend}: {records} records ready in {time.perf_counter() - started:.1f} s", flush=True
    )
    try:
        await measure(catalog, records)  # warm-up: caches, the pool, the reader threads
        return await measure(catalog, records, seed=12)
    finally:
        await catalog.close()


def sqlite_path() -> Path:
    return Path(__file__).resolve().parent / "data" / f"catalog-{RECORDS}.sqlite3"


def main() -> int:
    backends = [("sqlite", str(sqlite_path()))]
    if url := os.environ.get("BENCH_DATABASE_URL"):
        backends.append(("postgresql", url))
    for backend, where in backends:
        result = asyncio.run(figures(backend, where))
        print(
            f"{backend}: page of 100 from {RECORDS}: p50 {result.page_p50_ms:.2f} ms, "
            f"p99 {result.page_p99_ms:.2f} ms; check of {CHECK_HASHES}: "
            f"p50 {result.check_p50_ms:.1f} ms, max {result.check_max_ms:.1f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
