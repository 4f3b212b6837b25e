"""The catalog backends, without HTTP: the embedded SQLite file and a real PostgreSQL (each test
runs against both; see ``database_url`` in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from clustr_aio.catalog import postgres, sqlite
from clustr_aio.catalog.base import Catalog, FileRecord
from clustr_aio.catalog.factory import SQLITE_FILE, open_catalog
from clustr_aio.catalog.ids import id_time, is_id, new_id
from clustr_aio.settings import Settings
from tests.conftest import make_settings


def record(name: str, data: bytes = b"", content_type: str = "image/jpeg") -> FileRecord:
    record_id = new_id()
    return FileRecord(
        id=record_id,
        stored_name=name,
        original_name=f"original {name}",
        size=len(data) or 1,
        content_type=content_type,
        sha256=hashlib.sha256(data or name.encode()).hexdigest(),
        created_at=id_time(record_id),
    )


@pytest.fixture
def catalog_settings(upload_dir: Path, database_url: str | None) -> Settings:
    return make_settings(upload_dir, database_url=database_url)


@pytest.fixture
async def catalog(catalog_settings: Settings) -> AsyncIterator[Catalog]:
    async with open_catalog(catalog_settings) as opened:
        yield opened


def test_ids_are_uuid7_and_sort_in_the_order_they_were_made() -> None:
    ids = [new_id() for _ in range(10_000)]  # many within one millisecond
    assert all(is_id(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert not is_id(ids[0].upper())
    assert not is_id("019ad8c4-6f3a-4c21-9e4b-3f5d2a1b0c9e")  # a UUIDv4


def test_an_id_tells_its_time() -> None:
    dated = new_id(1_700_000_000_123)
    assert id_time(dated).timestamp() == 1_700_000_000.123
    assert id_time(dated).tzinfo is not None


async def test_records_go_in_and_come_back(catalog: Catalog) -> None:
    a, b = record("a.jpg"), record("b.png", content_type="image/png")
    await catalog.add([a, b])
    assert await catalog.get(a.id) == a
    assert await catalog.get(new_id()) is None
    newest = await catalog.page(limit=10, after=None, order="newest", content_type=None)
    assert newest == [b, a]
    oldest = await catalog.page(limit=10, after=None, order="oldest", content_type=None)
    assert oldest == [a, b]
    pngs = await catalog.page(limit=10, after=None, order="newest", content_type="image/png")
    assert pngs == [b]
    assert await catalog.stored_names() == {"a.jpg": a.id, "b.png": b.id}


async def test_keyset_pages_neither_repeat_nor_skip_while_records_come_and_go(
    catalog: Catalog,
) -> None:
    records = [record(f"{n}.jpg") for n in range(2500)]
    await catalog.add(records)
    seen: list[str] = []
    deleted: set[str] = set()
    after = None
    while True:
        page = await catalog.page(limit=100, after=after, order="oldest", content_type=None)
        if not page:
            break
        seen += [r.id for r in page]
        after = page[-1].id
        # Between pages: delete some not seen yet, some seen, and add newer ones.
        upcoming = [r.id for r in records if r.id > after][:7:3]
        gone = await catalog.delete([*upcoming, seen[0]])
        deleted |= {r.id for r in gone}
        if len(seen) < 2000:
            await catalog.add([record(f"new-{after}.jpg")])
    kept = [r.id for r in records if r.id not in deleted or r.id in seen]
    assert len(seen) == len(set(seen))  # no repeats
    assert [i for i in seen if i in {r.id for r in records}] == kept  # no gaps, in order


async def test_add_replaces_an_adopted_record_and_adopt_never_replaces(catalog: Catalog) -> None:
    adopted = record("a.jpg")
    assert await catalog.adopt([adopted]) == 1
    uploaded = record("a.jpg")
    await catalog.add([uploaded])  # the upload's commit wins over the start-up adoption
    assert await catalog.stored_names() == {"a.jpg": uploaded.id}
    assert await catalog.adopt([record("a.jpg"), record("b.jpg")]) == 1
    assert (await catalog.get(uploaded.id)) == uploaded


async def test_a_failed_add_adds_nothing(catalog: Catalog) -> None:
    a = record("a.jpg")
    await catalog.add([a])
    clash = record("b.jpg")
    twin = dataclasses.replace(record("c.jpg"), id=clash.id)
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await catalog.add([clash, twin])  # the same id twice: the transaction fails
    assert await catalog.stored_names() == {"a.jpg": a.id}


async def test_by_sha256_finds_the_oldest_record_of_each_digest(catalog: Catalog) -> None:
    first, second, other = record("a.jpg", b"x"), record("b.jpg", b"x"), record("c.jpg", b"y")
    await catalog.add([first, second, other])
    unknown = hashlib.sha256(b"z").hexdigest()
    found = await catalog.by_sha256([first.sha256, unknown, other.sha256, first.sha256])
    assert found == {first.sha256: first, other.sha256: other}
    many = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(10_000)]
    assert await catalog.by_sha256([*many, other.sha256]) == {other.sha256: other}


async def test_delete_answers_what_existed(catalog: Catalog) -> None:
    a, b = record("a.jpg"), record("b.jpg")
    await catalog.add([a, b])
    assert await catalog.delete([a.id, new_id()]) == [a]
    assert await catalog.delete([a.id]) == []
    assert await catalog.stored_names() == {"b.jpg": b.id}


async def test_one_process_at_a_time_holds_the_maintenance_lock(
    catalog_settings: Settings,
) -> None:
    async with open_catalog(catalog_settings) as one, open_catalog(catalog_settings) as two:
        async with one.exclusive() as held:
            assert held
            async with two.exclusive() as also:
                assert not also
        async with two.exclusive() as held_now:
            assert held_now


async def test_several_processes_migrating_at_once_all_open_the_one_schema(
    catalog_settings: Settings, upload_dir: Path
) -> None:
    async with AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(stack.enter_async_context(open_catalog(catalog_settings)) for _ in range(6))
        )
        await opened[0].add([record("a.jpg")])
        assert all([len(await c.stored_names()) == 1 for c in opened])
    if catalog_settings.database_url is None:
        with contextlib.closing(sqlite3.connect(upload_dir / SQLITE_FILE)) as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        assert version == len(sqlite.MIGRATIONS)
        assert mode == "wal"
    else:
        server = await asyncpg.connect(catalog_settings.database_url)
        try:
            versions = await server.fetch("SELECT version FROM clustr_schema")
        finally:
            await server.close()
        assert [v["version"] for v in versions] == [len(postgres.MIGRATIONS)]


async def test_an_images_dimensions_orientation_and_stripping_are_kept(catalog: Catalog) -> None:
    photo = dataclasses.replace(
        record("phone.jpg"), width=3024, height=4032, orientation=6, metadata_removed=True
    )
    plain = record("notes.bin", content_type="application/octet-stream")
    await catalog.add([photo, plain])
    assert await catalog.get(photo.id) == photo
    got = await catalog.get(plain.id)
    assert got is not None
    assert (got.width, got.height, got.orientation, got.metadata_removed) == (
        None,
        None,
        None,
        False,
    )
    assert (await catalog.by_sha256([photo.sha256]))[photo.sha256] == photo


async def test_a_catalog_of_version_1_is_migrated_with_its_records(
    catalog_settings: Settings, upload_dir: Path
) -> None:
    """A catalog made before images had their orientation: opening it adds the columns, and its
    records read as files whose metadata was not touched."""
    old = record("old.jpg")
    created_us = round(old.created_at.timestamp() * 1_000_000)
    values = (old.id, old.stored_name, old.original_name, old.size, old.content_type, old.sha256)
    if catalog_settings.database_url is None:
        path = upload_dir / SQLITE_FILE
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
            for statement in filter(str.strip, sqlite.MIGRATIONS[0].split(";")):
                connection.execute(statement)
            connection.execute("PRAGMA user_version = 1")
            connection.execute(
                "INSERT INTO files (id, stored_name, original_name, size, content_type, sha256,"
                " created_us, width, height) VALUES (?, ?, ?, ?, ?, ?, ?, 64, 48)",
                (*values, created_us),
            )
    else:
        server = await asyncpg.connect(catalog_settings.database_url)
        try:
            await server.execute(postgres.MIGRATIONS[0])
            await server.execute("CREATE TABLE clustr_schema (version integer NOT NULL)")
            await server.execute("INSERT INTO clustr_schema VALUES (1)")
            await server.execute(
                "INSERT INTO files (id, stored_name, original_name, size, content_type, sha256,"
                " created_at, width, height) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, 64, 48)",
                *values,
                old.created_at,
            )
        finally:
            await server.close()
    async with open_catalog(catalog_settings) as catalog:
        migrated = await catalog.get(old.id)
    assert migrated == dataclasses.replace(old, width=64, height=48)
    assert (migrated.orientation, migrated.metadata_removed) == (None, False)
