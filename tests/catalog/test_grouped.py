"""One-record commits of one loop turn made as one transaction (clustr_aio/catalog/grouped.py),
on the real SQLite catalog."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from clustr_aio.catalog import sqlite
from clustr_aio.catalog.factory import SQLITE_FILE
from tests.catalog.test_catalog import record, stored_names


@pytest.fixture
async def catalog(upload_dir: Path) -> AsyncIterator[sqlite.SqliteCatalog]:
    opened = sqlite.SqliteCatalog(upload_dir / SQLITE_FILE, durable=False)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_one_record_adds_of_one_loop_turn_are_one_transaction(
    catalog: sqlite.SqliteCatalog,
) -> None:
    records = [record(f"{n}.jpg") for n in range(8)]
    await asyncio.gather(*(catalog.add([r]) for r in records))
    assert catalog._loop_commits == 1
    assert sorted(await stored_names(catalog)) == sorted(r.stored_name for r in records)
    await catalog.add([record("later.jpg")])  # a turn of its own: a transaction of its own
    assert catalog._loop_commits == 2


async def test_a_failing_record_fails_its_own_add_only(catalog: sqlite.SqliteCatalog) -> None:
    """The transaction of the turn fails on one record (NOT NULL): it is made again one add at
    a time, so the others are stored and only that add raises."""
    broken = dataclasses.replace(record("broken.jpg"), original_name=None)  # type: ignore[arg-type]
    good = [record("a.jpg"), record("b.jpg")]
    outcomes = await asyncio.gather(
        catalog.add([good[0]]), catalog.add([broken]), catalog.add([good[1]]),
        return_exceptions=True,
    )  # fmt: skip
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert sorted(await stored_names(catalog)) == ["a.jpg", "b.jpg"]


async def test_a_turn_whose_write_lock_is_taken_waits_for_it_on_the_writer_thread(
    catalog: sqlite.SqliteCatalog, upload_dir: Path
) -> None:
    records = [record(f"{n}.jpg") for n in range(3)]
    other_connection = sqlite3.connect(upload_dir / SQLITE_FILE, isolation_level=None)
    with contextlib.closing(other_connection) as other:
        other.execute("BEGIN IMMEDIATE")  # another worker, in the middle of a write
        waiting = asyncio.gather(*(catalog.add([r]) for r in records))
        for _ in range(20):
            await asyncio.sleep(0.01)  # the loop is free while the adds wait
        assert not waiting.done()
        other.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)
    assert catalog._loop_commits == 0
    assert sorted(await stored_names(catalog)) == sorted(r.stored_name for r in records)


async def test_a_durable_catalog_commits_a_turns_adds_as_one_flushed_transaction_off_the_loop(
    upload_dir: Path,
) -> None:
    """FSYNC=true: every commit flushes the WAL (``synchronous = FULL``: the records of a 200
    survive a power cut), so none is made on the loop, which would wait for the flush; the
    adds of one turn still share one transaction, and so one flush, on the writer thread."""
    catalog = sqlite.SqliteCatalog(upload_dir / SQLITE_FILE, durable=True)
    await catalog.open()
    try:
        transactions: list[tuple[str, int]] = []
        transaction = catalog._transaction

        def noting(statement: str, rows: Sequence[Sequence[object]]) -> int:
            transactions.append((threading.current_thread().name, len(rows)))
            return transaction(statement, rows)

        catalog._transaction = noting  # type: ignore[method-assign]
        records = [record(f"{n}.jpg") for n in range(8)]
        await asyncio.gather(*(catalog.add([r]) for r in records))
        assert catalog._loop_commits == 0
        [(thread, rows)] = transactions
        assert thread.startswith("clustr-catalog-w")
        assert rows == 8
        assert sorted(await stored_names(catalog)) == sorted(r.stored_name for r in records)
        assert await catalog._write(_synchronous, catalog) == FULL
    finally:
        await catalog.close()


FULL = 2
"""``PRAGMA synchronous``'s answer for FULL (NORMAL is 1)."""


def _synchronous(catalog: sqlite.SqliteCatalog) -> int:
    assert catalog._write_connection is not None
    value: int = catalog._write_connection.execute("PRAGMA synchronous").fetchone()[0]
    return value
