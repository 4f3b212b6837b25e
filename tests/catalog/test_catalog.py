"""The catalog backends, without HTTP: the embedded SQLite file and a real PostgreSQL (each test
runs against both; see ``database_url`` in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import os
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


async def stored_names(catalog: Catalog) -> dict[str, str]:
    """Every record's stored name and id, walked as the reconciliation walks them (pages of
    7 here: several pages in most tests)."""
    names: dict[str, str] = {}
    after = None
    while page := await catalog.stored_names_after(after, 7):
        assert [name for name, _ in page] == sorted(name for name, _ in page)
        assert after is None or page[0][0] > after
        names.update(page)
        after = page[-1][0]
    return names


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
    assert await stored_names(catalog) == {"a.jpg": a.id, "b.png": b.id}


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
    assert await stored_names(catalog) == {"a.jpg": uploaded.id}
    assert await catalog.adopt([record("a.jpg"), record("b.jpg")]) == 1
    assert (await catalog.get(uploaded.id)) == uploaded


async def test_a_failed_add_adds_nothing(catalog: Catalog) -> None:
    a = record("a.jpg")
    await catalog.add([a])
    clash = record("b.jpg")
    twin = dataclasses.replace(record("c.jpg"), id=clash.id)
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await catalog.add([clash, twin])  # the same id twice: the transaction fails
    assert await stored_names(catalog) == {"a.jpg": a.id}


async def test_by_sha256_finds_the_oldest_record_of_each_digest(catalog: Catalog) -> None:
    first, second, other = record("a.jpg", b"x"), record("b.jpg", b"x"), record("c.jpg", b"y")
    await catalog.add([first, second, other])
    unknown = hashlib.sha256(b"z").hexdigest()
    found = await catalog.by_sha256([first.sha256, unknown, other.sha256, first.sha256])
    assert found == {first.sha256: first, other.sha256: other}
    many = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(10_000)]
    assert await catalog.by_sha256([*many, other.sha256]) == {other.sha256: other}
    # The check's look-up: the same records' ids.
    found_ids = await catalog.ids_by_sha256([first.sha256, unknown, other.sha256, first.sha256])
    assert found_ids == {first.sha256: first.id, other.sha256: other.id}
    assert await catalog.ids_by_sha256([*many, other.sha256]) == {other.sha256: other.id}
    assert await catalog.ids_by_sha256([]) == {}


async def test_a_digests_oldest_record_is_found_among_many_of_the_same_bytes(
    catalog: Catalog,
) -> None:
    """With DEDUPE=off a digest may have any number of records: one answer each, the oldest."""
    copies = [record(f"copy-{n}.jpg", b"same") for n in range(30)]
    others = [record(f"other-{n}.jpg", b"o%d" % n) for n in range(30)]
    await catalog.add(copies[10:] + others + copies[:10])  # inserted out of id order
    asked = [copies[0].sha256, *(o.sha256 for o in others)]
    assert await catalog.ids_by_sha256(asked) == {
        copies[0].sha256: copies[0].id,
        **{o.sha256: o.id for o in others},
    }
    assert (await catalog.by_sha256(asked))[copies[0].sha256] == copies[0]


async def test_the_check_finds_only_the_owners_records(catalog: Catalog) -> None:
    mine = dataclasses.replace(record("mine.jpg", b"m"), owner="me")
    theirs_same = dataclasses.replace(record("theirs.jpg", b"m"), owner="them")  # older: no
    theirs = dataclasses.replace(record("t.jpg", b"t"), owner="them")
    await catalog.add([theirs_same, mine, theirs])
    digests = [mine.sha256, theirs.sha256]
    assert await catalog.ids_by_sha256(digests, owner="me") == {mine.sha256: mine.id}
    assert await catalog.ids_by_sha256(digests, owner="them") == {
        mine.sha256: theirs_same.id,
        theirs.sha256: theirs.id,
    }
    assert await catalog.ids_by_sha256(digests) == {
        mine.sha256: min(mine.id, theirs_same.id),
        theirs.sha256: theirs.id,
    }
    assert await catalog.ids_by_sha256(digests, owner="nobody") == {}


async def test_every_stored_digest_is_found_by_its_key(catalog: Catalog) -> None:
    """Digests are indexed by a key the database computes (digest_key, in its own SQL): it
    agrees with the key a look-up computes, for every hex digit in every place."""
    records = [record(f"{n}.jpg", os.urandom(16)) for n in range(400)]
    await catalog.add(records)
    assert await catalog.by_sha256([r.sha256 for r in records]) == {r.sha256: r for r in records}
    assert await catalog.ids_by_sha256([r.sha256 for r in records]) == {
        r.sha256: r.id for r in records
    }


async def test_digests_that_share_a_key_are_told_apart(catalog: Catalog) -> None:
    """A record found by the key of its digest (the first 60 bits) counts only when its whole
    digest is the one asked for, in a check as in DEDUPE's commit."""
    key = "0123456789abcde"
    one, two, three = (
        dataclasses.replace(record(f"{n}.jpg"), sha256=key + str(n) * 49) for n in (1, 2, 3)
    )
    await catalog.add([one, two])
    assert await catalog.by_sha256([one.sha256]) == {one.sha256: one}
    assert await catalog.by_sha256([three.sha256, two.sha256]) == {two.sha256: two}
    assert await catalog.ids_by_sha256([one.sha256]) == {one.sha256: one.id}
    assert await catalog.ids_by_sha256([three.sha256, two.sha256]) == {two.sha256: two.id}
    assert await catalog.add_unique([three], all_or_none=True) == {}
    assert await catalog.by_sha256([three.sha256]) == {three.sha256: three}


async def test_add_unique_inserts_only_bytes_not_stored_yet(catalog: Catalog) -> None:
    stored = record("a.jpg", b"x")
    await catalog.add([stored])
    again, new = record("a-1.jpg", b"x"), record("b.jpg", b"y")
    assert await catalog.add_unique([again, new], all_or_none=False) == {stored.sha256: stored}
    assert await stored_names(catalog) == {"a.jpg": stored.id, "b.jpg": new.id}
    late, other = record("b-1.jpg", b"y"), record("c.jpg", b"z")
    assert await catalog.add_unique([other, late], all_or_none=True) == {new.sha256: new}
    assert "c.jpg" not in await stored_names(catalog)  # all or none: none


async def test_add_unique_from_two_processes_at_once_stores_the_bytes_once(
    catalog_settings: Settings,
) -> None:
    """Two catalogs on one database (two workers), committing the same new bytes at the same
    moment, 20 times over: one insert wins each time, the other is told of it."""
    async with open_catalog(catalog_settings) as one, open_catalog(catalog_settings) as two:
        for n in range(20):
            data = b"same bytes %d" % n
            first, second = record(f"a{n}.jpg", data), record(f"b{n}.jpg", data)
            raced = await asyncio.gather(
                one.add_unique([first], all_or_none=False),
                two.add_unique([second], all_or_none=False),
            )
            assert sorted(len(r) for r in raced) == [0, 1]
            winner = first if not raced[0] else second
            assert [r[winner.sha256] for r in raced if r] == [winner]
            assert await one.by_sha256([winner.sha256]) == {winner.sha256: winner}
        assert len(await stored_names(one)) == 20


async def test_get_many_answers_what_exists_once_and_only_the_owners(catalog: Catalog) -> None:
    a, b = record("a.jpg"), record("b.jpg")
    theirs = dataclasses.replace(record("t.jpg"), owner="them")
    await catalog.add([a, b, theirs])
    found = await catalog.get_many([b.id, new_id(), a.id, b.id, theirs.id])
    assert sorted(found, key=lambda r: r.id) == sorted([a, b, theirs], key=lambda r: r.id)
    assert await catalog.get_many([a.id, theirs.id], owner="them") == [theirs]
    assert await catalog.get_many([]) == []
    many = [new_id() for _ in range(2000)] + [a.id]  # more than SQLite's parameters
    assert await catalog.get_many(many) == [a]


async def test_delete_answers_what_existed(catalog: Catalog) -> None:
    a, b = record("a.jpg"), record("b.jpg")
    await catalog.add([a, b])
    assert await catalog.delete([a.id, new_id()]) == [a]
    assert await catalog.delete([a.id]) == []
    assert await stored_names(catalog) == {"b.jpg": b.id}


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


async def test_the_maintenance_lock_is_let_go_when_its_holder_is_cancelled_letting_go(
    catalog_settings: Settings,
) -> None:
    """Cancelled once in the lock's scope, then again while it lets go: the lock is free for
    the next process all the same (PostgreSQL's pool does not reset a connection given
    back, so the session that may hold it is ended instead)."""
    inside = asyncio.Event()

    async def hold(catalog: Catalog) -> None:
        async with catalog.exclusive() as held:
            assert held
            inside.set()
            await asyncio.Event().wait()

    async with open_catalog(catalog_settings) as one, open_catalog(catalog_settings) as two:
        holder = asyncio.ensure_future(hold(one))
        await inside.wait()
        holder.cancel()
        await asyncio.sleep(0)  # the holder is letting go now: its unlock is on its way
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        async with two.exclusive() as held_now:
            assert held_now
        async with one.exclusive() as held_again:  # its pool works on, with a new session
            assert held_again


async def test_several_processes_migrating_at_once_all_open_the_one_schema(
    catalog_settings: Settings, upload_dir: Path
) -> None:
    async with AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(stack.enter_async_context(open_catalog(catalog_settings)) for _ in range(6))
        )
        await opened[0].add([record("a.jpg")])
        assert all([len(await stored_names(c)) == 1 for c in opened])
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


async def test_postgresql_finds_a_digests_oldest_record_by_index_without_statistics(
    catalog_settings: Settings,
) -> None:
    """Just filled, not analyzed yet (as after a migration or a restore), and analyzed: the
    digests' keys are looked up in their index, never by a walk of the primary key in id
    order (with an index on sha256 alone, a check of 10,000 new digests among 1,000,000
    records ran for over 10 minutes) nor by a sequential scan (what the planner chose for
    ``= ANY`` of an array it could see the 10,000 keys of: 350-650 ms)."""
    if catalog_settings.database_url is None:
        pytest.skip("PostgreSQL's planner (SQLite's index holds the id already)")
    async with open_catalog(catalog_settings) as catalog:
        assert isinstance(catalog, postgres.PostgresCatalog)
        for batch in range(4):
            await catalog.add(
                [
                    dataclasses.replace(record(f"{batch}-{n}.jpg"), owner=f"o{n % 3}")
                    for n in range(5000)
                ]
            )
        digests = postgres._digests_text(
            hashlib.sha256(b"new %d" % n).hexdigest() for n in range(10_000)
        )
        plans: list[str] = []
        async with catalog.pool.acquire() as connection:
            for analyzed in (False, True):
                if analyzed:
                    await connection.execute("ANALYZE files")
                for mode in ("auto", "force_generic_plan"):
                    await connection.execute(f"SET plan_cache_mode = {mode}")
                    for columns in (postgres._COLUMNS, postgres._ID_COLUMNS):
                        for owner in (None, "o1"):
                            query = postgres._oldest_by_sha256(columns, owner)
                            rows = await connection.fetch(
                                f"EXPLAIN {query}", digests, *([owner] if owner else [])
                            )
                            plans.append("\n".join(row[0] for row in rows))
            await connection.execute("RESET plan_cache_mode")
    for text in plans:
        assert "files_by_sha256_key" in text, text
        assert "files_pkey" not in text, text
        assert "Seq Scan on files" not in text, text


async def test_sqlite_looks_digests_up_by_key_even_among_an_owners_files(
    catalog_settings: Settings, upload_dir: Path
) -> None:
    """Left to itself, SQLite's planner looked among the owner's records (files_by_owner) for
    each digest: with one owner of a million files, a scan of them all per digest."""
    if catalog_settings.database_url is not None:
        pytest.skip("SQLite's planner (PostgreSQL's: the test above)")
    async with open_catalog(catalog_settings) as catalog:
        await catalog.add([dataclasses.replace(record(f"{n}.jpg"), owner="o") for n in range(50)])
    with contextlib.closing(sqlite3.connect(upload_dir / SQLITE_FILE)) as connection:
        for owner, columns in itertools.product((None, "o"), (None, sqlite._ID_COLUMNS)):
            query = sqlite._oldest_by_sha256_query(owner, *([columns] if columns else []))
            parameters = ("[1, 2]", *([owner] if owner else []))
            plan = connection.execute(f"EXPLAIN QUERY PLAN {query}", parameters).fetchall()
            steps = [row[3] for row in plan]
            assert steps[0].startswith("SCAN k"), steps
            assert "INDEX files_by_sha256_key" in steps[1], steps


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
        by_digest = await catalog.by_sha256([old.sha256])  # its digest's key made for it
    assert migrated == dataclasses.replace(old, width=64, height=48)
    assert (migrated.orientation, migrated.metadata_removed) == (None, False)
    assert by_digest == {old.sha256: migrated}


async def test_sqlite_commits_one_record_on_the_loop_unless_the_write_lock_is_taken(
    upload_dir: Path,
) -> None:
    """A one-record add commits on the loop's own thread when the write lock is free; when
    another connection holds it, the add waits for it on the writer thread, and the loop goes
    on meanwhile."""
    path = upload_dir / SQLITE_FILE
    catalog = sqlite.SqliteCatalog(path, durable=False)
    await catalog.open()
    try:
        first = record("first.jpg")
        await catalog.add([first])
        assert catalog._loop_commits == 1  # no thread
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another worker, in the middle of a write
            waiting = asyncio.ensure_future(catalog.add([record("second.jpg")]))
            for _ in range(20):
                await asyncio.sleep(0.01)  # the loop is free while the add waits
            assert not waiting.done()
            other.execute("COMMIT")
            await asyncio.wait_for(waiting, 10)
        assert catalog._loop_commits == 1  # that one took the writer thread
        assert sorted(await stored_names(catalog)) == ["first.jpg", "second.jpg"]
    finally:
        await catalog.close()


async def test_sqlite_one_record_commits_on_the_loop_are_checkpointed(upload_dir: Path) -> None:
    """The loop's connection never checkpoints (that flushes files); the writer thread does,
    every so many of its commits, so the WAL is reused instead of growing with every upload."""
    path = upload_dir / SQLITE_FILE
    catalog = sqlite.SqliteCatalog(path, durable=False)
    await catalog.open()
    try:
        for n in range(1000):
            await catalog.add([record(f"{n}.jpg")])
        await stored_names(catalog)  # a read after the last checkpoint was asked for
        await asyncio.sleep(0.1)
        wal = await asyncio.to_thread(os.path.getsize, f"{path}-wal")
        assert catalog._loop_commits > 900  # those during a checkpoint took the writer thread
        assert len(await stored_names(catalog)) == 1000
    finally:
        await catalog.close()
    # 1,000 commits of a few pages each, never checkpointed, made a WAL of 27 MB; checkpointed,
    # it is reused from its start, and stays about as large as SQLite's own 1,000-page limit.
    assert wal < 4 * 1024 * 1024, wal
