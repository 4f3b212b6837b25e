"""The embedded catalog: one SQLite file (by default ``UPLOAD_FOLDER/.catalog.sqlite3``: a
dot-name, which the storage never serves), shared by every process on this machine.

The standard library's ``sqlite3`` rather than aiosqlite: aiosqlite is one thread per
connection with no pool of readers, so it would be wrapped the same way, and ``make run``
keeps needing nothing but Python. WAL journal: readers never block the writer nor each
other. Writes go through **one connection on one thread** (``BEGIN IMMEDIATE``, so a write
transaction takes the file's write lock at its start and never fails half-way on a lock
upgrade); reads run on a small pool of threads, one connection each. Between processes SQLite's
own locking applies, with a busy timeout.

Migrations run at open, inside ``BEGIN IMMEDIATE``: of several processes starting at once, one
migrates while the others wait on the lock, then find ``user_version`` current.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import operator
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from clustr_aio.catalog.base import (
    KEY_DIGITS,
    SHA256_AT,
    FileRecord,
    KeyRecord,
    Order,
    digest_key,
    row_record,
)
from clustr_aio.catalog.changes import ChangeCounter
from clustr_aio.catalog.grouped import GroupedCommits
from clustr_aio.domain.errors import CatalogUnavailable

__all__ = ["KEY_CHANGES_SUFFIX", "MIGRATIONS", "SqliteCatalog"]

log = logging.getLogger("clustr_aio.catalog")
_T = TypeVar("_T")
_V = TypeVar("_V")


def _digest_key_sql(column: str) -> str:
    """:func:`~clustr_aio.catalog.base.digest_key` in SQL, for SQLite before 3.41 (Debian 12
    has 3.40), which has no ``unhex``: each of the first hex digits' value, shifted in place."""
    value = "(instr('0123456789abcdef', substr({column}, {n}, 1)) - 1)"
    digits = [
        f"({value.format(column=column, n=n + 1)} << {4 * (KEY_DIGITS - 1 - n)})"
        for n in range(KEY_DIGITS)
    ]
    return " | ".join(digits)


MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the files.
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        stored_name TEXT NOT NULL UNIQUE,
        original_name TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        width INTEGER,
        height INTEGER,
        owner TEXT
    ) WITHOUT ROWID;
    CREATE INDEX files_by_sha256 ON files (sha256);
    CREATE INDEX files_by_type ON files (content_type, id);
    """,
    # 2: what the image check reads (width and height were there already).
    """
    ALTER TABLE files ADD COLUMN orientation INTEGER;
    ALTER TABLE files ADD COLUMN metadata_removed INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: API keys, files by owner, each owner's bytes (kept by triggers) and quota reservations.
    """
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        last_used_us INTEGER,
        expires_us INTEGER,
        quota INTEGER
    );
    CREATE INDEX files_by_owner ON files (owner, id);
    CREATE TABLE owner_usage (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO owner_usage
        SELECT owner, SUM(size) FROM files WHERE owner IS NOT NULL GROUP BY owner;
    CREATE TRIGGER files_usage_insert AFTER INSERT ON files WHEN NEW.owner IS NOT NULL BEGIN
        INSERT INTO owner_usage VALUES (NEW.owner, NEW.size)
            ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER files_usage_delete AFTER DELETE ON files WHEN OLD.owner IS NOT NULL BEGIN
        UPDATE owner_usage SET bytes = bytes - OLD.size WHERE owner = OLD.owner;
    END;
    CREATE TRIGGER files_usage_update_old AFTER UPDATE OF owner, size ON files
        WHEN OLD.owner IS NOT NULL BEGIN
        UPDATE owner_usage SET bytes = bytes - OLD.size WHERE owner = OLD.owner;
    END;
    CREATE TRIGGER files_usage_update_new AFTER UPDATE OF owner, size ON files
        WHEN NEW.owner IS NOT NULL BEGIN
        INSERT INTO owner_usage VALUES (NEW.owner, NEW.size)
            ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes;
    END;
    CREATE TABLE quota_reservations (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        lease_until_us INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX quota_reservations_by_owner ON quota_reservations (owner);
    """,
    # 4 (PostgreSQL's 5; its 4 made an index SQLite had already): digests looked up by their
    # key (digest_key: the first 60 bits as an integer) instead of their 64 characters of hex.
    # Its index is half the size (an entry is the key and the id), so a check of 10,000
    # digests reads half the pages. A virtual column: SQLite computes it from sha256 itself,
    # on every insert, and stores it in the index only.
    f"""
    ALTER TABLE files ADD COLUMN sha256_key INTEGER AS ({_digest_key_sql("sha256")}) VIRTUAL;
    CREATE INDEX files_by_sha256_key ON files (sha256_key);
    DROP INDEX files_by_sha256;
    """,
)
"""Schema versions: ``user_version`` N means the first N have been applied. Append only."""

_COLUMNS: Final = (
    "id, stored_name, original_name, size, content_type, sha256, created_us, width, height, owner,"
    " orientation, metadata_removed"
)
_JOINED_COLUMNS: Final = ", ".join(f"f.{c}" for c in _COLUMNS.split(", "))
_ID_COLUMNS: Final = "f.sha256, f.id"
"""What the check reads of each record it finds (:meth:`SqliteCatalog.ids_by_sha256`)."""
_PLACEHOLDERS: Final = ", ".join("?" * 12)
_LOOP_COMMITS_PER_CHECKPOINT: Final = 100
"""A one-row commit adds a few pages to the WAL; SQLite's own autocheckpoint is 1,000 pages."""
_UPSERT: Final = (
    f"INSERT INTO files ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) ON CONFLICT (stored_name) DO UPDATE "
    f"SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS.split(', '))}"
)
"""An upload's records: one whose stored name is catalogued already replaces that record (the
start-up reconciliation may have adopted the file between its link and this commit)."""
_KEY_COLUMNS: Final = "name, key_hash, scopes, owner, created_us, last_used_us, expires_us, quota"
_KEY_BY_HASH: Final = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"
KEY_CHANGES_SUFFIX: Final = ".keys"
"""The key changes' counter is the catalog file's name and this (a dot-name beside it)."""
_BUSY_TIMEOUT_MS: Final = 30_000
_READERS: Final = 4


def _row(record: FileRecord) -> tuple[object, ...]:
    created_us = round(record.created_at.timestamp() * 1_000_000)
    return (
        record.id,
        record.stored_name,
        record.original_name,
        record.size,
        record.content_type,
        record.sha256,
        created_us,
        record.width,
        record.height,
        record.owner,
        record.orientation,
        record.metadata_removed,
    )


def _record(row: Sequence[Any]) -> FileRecord:
    return row_record(
        row,
        record_id=row[0],
        created_at=datetime.fromtimestamp(row[6] / 1_000_000, UTC),
        metadata_removed=bool(row[11]),
    )


def _oldest_by_sha256_query(owner: str | None, columns: str = _JOINED_COLUMNS) -> str:
    """``columns`` of each digest's records, oldest first (of ``owner``'s, when given), looked
    up by key.

    CROSS JOIN keeps the keys the outer loop, INDEXED BY the index: SQLite's planner would
    otherwise look among an owner's records (files_by_owner) for each key, a scan of all of
    them per digest."""
    return (
        f"SELECT {columns} FROM json_each(?) AS k CROSS JOIN files AS f "
        f"INDEXED BY files_by_sha256_key ON f.sha256_key = k.value {_owned(owner, 'f.')} "
        "ORDER BY f.id"
    )


def _by_key(
    connection: sqlite3.Connection, query: str, digests: Iterable[str], owner: str | None
) -> sqlite3.Cursor:
    # One query for them all: the digests' keys, sorted, as one JSON array parameter, looked
    # up in the key's index in that order (neighbouring keys share their index pages, so a
    # page is read once for all the keys it holds); the oldest record per digest is the first
    # in id order. A record whose digest only shares the key is the caller's to skip.
    keys = sorted({digest_key(d) for d in digests})
    return connection.execute(query, (json.dumps(keys), *_owner_parameter(owner)))


def _oldest_by_sha256(
    connection: sqlite3.Connection, digests: list[str], owner: str | None
) -> dict[str, FileRecord]:
    wanted = set(digests)
    rows = _by_key(connection, _oldest_by_sha256_query(owner), wanted, owner)
    return _first_per_digest(rows, wanted, SHA256_AT, _record)


def _first_per_digest(
    rows: Iterable[Sequence[Any]],
    wanted: Collection[str],
    digest_at: int,
    value: Callable[[Sequence[Any]], _V],
) -> dict[str, _V]:
    """``value`` of the first row (the oldest record: rows come in id order) of each wanted
    digest; a row whose digest only shares the key with a wanted one is skipped."""
    found: dict[str, _V] = {}
    for row in rows:
        digest = row[digest_at]
        if digest in wanted and digest not in found:
            found[digest] = value(row)
    return found


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1_000_000)


def _moment(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, UTC)


def _key_row(key: KeyRecord) -> tuple[object, ...]:
    return (
        key.name,
        key.key_hash,
        ",".join(sorted(key.scopes)),
        key.owner,
        _us(key.created_at),
        _us(key.last_used_at),
        _us(key.expires_at),
        key.quota,
    )


def _key_record(row: Sequence[Any]) -> KeyRecord:
    created = _moment(row[4])
    assert created is not None
    return KeyRecord(
        name=row[0],
        key_hash=row[1],
        scopes=frozenset(filter(None, row[2].split(","))),
        owner=row[3],
        created_at=created,
        last_used_at=_moment(row[5]),
        expires_at=_moment(row[6]),
        quota=row[7],
    )


def statements(script: str) -> list[str]:
    """The statements of a migration script (a trigger's body holds semicolons of its own)."""
    found: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    assert not pending.strip(), f"incomplete statement in a migration: {pending!r}"
    return found


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE itself.
    connection = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return connection


def _owned(owner: str | None, table: str = "") -> str:
    """The condition that keeps one owner's records only, when ``owner`` is given (``table``:
    the files table's alias and a dot, in a join)."""
    return "" if owner is None else f"AND {table}owner = ?"


def _owner_parameter(owner: str | None) -> tuple[str, ...]:
    return () if owner is None else (owner,)


def _one(cursor: sqlite3.Cursor) -> Any:
    """The first row, or None, with the statement run to its end, so that no read
    transaction can stay open on a connection between two requests (one would keep the WAL
    from being restarted)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _now_us() -> int:
    return round(datetime.now(UTC).timestamp() * 1_000_000)


class SqliteCatalog:
    """Open with :meth:`open`, release with :meth:`close`.

    ``durable`` (``FSYNC=true``): every commit flushes the WAL before it returns
    (``synchronous = FULL``), so the records of an upload answered 200 survive a power cut as
    its files do; and no commit is made on the loop, which would wait for that flush. Without
    it (``synchronous = NORMAL``) a commit survives the process, not the machine: the WAL is
    flushed at checkpoints only, and after a power cut the reconciliation would adopt the
    stored file under a new id and without its owner."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        self.path = path
        self.durable = durable
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="clustr-catalog-w")
        self._readers = ThreadPoolExecutor(_READERS, thread_name_prefix="clustr-catalog-r")
        self._write_connection: sqlite3.Connection | None = None
        self._local = threading.local()
        self._read_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._loop_reader: sqlite3.Connection | None = None
        self._loop_writer: sqlite3.Connection | None = None
        self._loop_commits = 0
        self._checkpointing = False  # set on the loop, cleared by the writer thread
        self._key_changes: ChangeCounter | None = None
        self._grouped = GroupedCommits(
            self._upsert_on_loop,
            self._upsert_on_writer,
            row_errors=(sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError),
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._write(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Processes starting at once (WORKERS=N) open one after the other: switching a new file
        # to WAL takes an exclusive lock that SQLite's busy handler does not wait for, and the
        # loser got "database is locked" and failed to start.
        lock_fd = os.open(f"{self.path}.open-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._open_locked()
        finally:
            os.close(lock_fd)
        self._key_changes = ChangeCounter(Path(f"{self.path}{KEY_CHANGES_SUFFIX}"))

    def _open_locked(self) -> None:
        connection = _connect(self.path)
        self._write_connection = connection
        connection.execute("PRAGMA journal_mode = WAL")  # persistent; outside any transaction
        connection.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            version: int = connection.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    connection.execute(statement)
                log.info("catalog %s: schema migrated to version %d", self.path.name, number)
            connection.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed already
            await self._write(self._close_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for connection in self._read_connections:
                connection.close()
            self._read_connections.clear()
        for on_loop in (self._loop_reader, self._loop_writer):
            if on_loop is not None:
                on_loop.close()
        self._loop_reader = self._loop_writer = None
        if self._key_changes is not None:
            self._key_changes.close()
            self._key_changes = None

    def _close_writer(self) -> None:
        if self._write_connection is not None:
            self._write_connection.close()
            self._write_connection = None

    # -- threads ---------------------------------------------------------------------------

    async def _write(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self.path)
            connection.execute("PRAGMA query_only = true")
            self._local.connection = connection
            with self._connections_lock:
                self._read_connections.append(connection)
        return connection

    def _transaction(self, statement: str, rows: Sequence[Sequence[object]]) -> int:
        connection = self._write_connection
        assert connection is not None, "SqliteCatalog used before open()"
        connection.execute("BEGIN IMMEDIATE")
        try:
            before = connection.total_changes
            connection.executemany(statement, rows)
            changed = connection.total_changes - before
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return changed

    # -- Catalog ---------------------------------------------------------------------------

    async def add(self, records: Sequence[FileRecord]) -> None:
        rows = [_row(r) for r in records]
        if len(rows) == 1:  # an upload of one file: with the others of this loop turn's
            await self._grouped.commit(rows)
            return
        await self._write(self._transaction, _UPSERT, rows)

    def _upsert_on_loop(self, rows: Sequence[Sequence[object]]) -> bool:
        return self._commit_on_loop(_UPSERT, rows)

    async def _upsert_on_writer(self, rows: Sequence[Sequence[object]]) -> None:
        await self._write(self._transaction, _UPSERT, rows)

    def _commit_on_loop(self, statement: str, rows: Sequence[Sequence[object]]) -> bool:
        """One record committed on the event loop's own thread, as :meth:`key_by_hash` reads:
        the hop to the writer thread and back cost more CPU than the commit itself (one row
        and its index entries written to the WAL, which ``synchronous = NORMAL`` does not
        flush). Only when the write lock is free at once (``busy_timeout = 0``): if another
        connection holds it (the writer thread, another worker), False, and the caller takes
        the writer thread, which waits for it. This connection never checkpoints (that
        flushes the files): after every :data:`_LOOP_COMMITS_PER_CHECKPOINT` of its commits,
        the writer thread runs a passive one (it waits for no reader, as SQLite's own
        autocheckpoint), and until it is done the commits queue behind it there, so that it
        can copy every frame and the WAL is restarted, not grown. (A RESTART checkpoint waits
        for readers: a long read in any process would have held every commit.) Never when
        :attr:`durable`: the commit's flush would hold the loop."""
        if self._checkpointing or self.durable:
            return False
        connection = self._loop_writer
        if connection is None:
            connection = _connect(self.path)
            self._loop_writer = connection
            connection.execute("PRAGMA busy_timeout = 0")
            connection.execute("PRAGMA synchronous = NORMAL")  # per connection
            connection.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # SQLITE_BUSY: someone else is writing
            return False
        try:
            connection.executemany(statement, rows)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._loop_commits += 1
        if self._loop_commits % _LOOP_COMMITS_PER_CHECKPOINT == 0:
            self._checkpointing = True
            self._writer.submit(self._checkpoint_sync)
        return True

    def _checkpoint_sync(self) -> None:
        connection = self._write_connection
        try:
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):  # else the next one does
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            self._checkpointing = False

    async def add_unique(
        self, records: Sequence[FileRecord], *, all_or_none: bool, owner: str | None = None
    ) -> dict[str, FileRecord]:
        return await self._write(self._add_unique_sync, list(records), all_or_none, owner)

    def _add_unique_sync(
        self, records: list[FileRecord], all_or_none: bool, owner: str | None
    ) -> dict[str, FileRecord]:
        # BEGIN IMMEDIATE holds the file's write lock, across processes, from the look-up to
        # the commit: no other upload's records can land in between.
        connection = self._write_connection
        assert connection is not None, "SqliteCatalog used before open()"
        connection.execute("BEGIN IMMEDIATE")
        try:
            taken = _oldest_by_sha256(connection, [r.sha256 for r in records], owner)
            if not (taken and all_or_none):
                connection.executemany(_UPSERT, [_row(r) for r in records if r.sha256 not in taken])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return taken

    async def adopt(self, records: Sequence[FileRecord]) -> int:
        statement = (
            f"INSERT INTO files ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
            "ON CONFLICT (stored_name) DO NOTHING"
        )
        return await self._write(self._transaction, statement, [_row(r) for r in records])

    async def delete(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        return await self._write(self._delete_sync, list(record_ids), owner)

    def _delete_sync(self, record_ids: list[str], owner: str | None) -> list[FileRecord]:
        connection = self._write_connection
        assert connection is not None, "SqliteCatalog used before open()"
        deleted: list[FileRecord] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for record_id in record_ids:
                row = connection.execute(
                    f"DELETE FROM files WHERE id = ? {_owned(owner)} RETURNING {_COLUMNS}",
                    (record_id, *_owner_parameter(owner)),
                ).fetchone()
                if row is not None:
                    deleted.append(_record(row))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return deleted

    async def get(self, record_id: str, *, owner: str | None = None) -> FileRecord | None:
        return await self._read(self._get_sync, record_id, owner)

    def _get_sync(self, record_id: str, owner: str | None) -> FileRecord | None:
        query = f"SELECT {_COLUMNS} FROM files WHERE id = ? {_owned(owner)}"
        row = _one(self._reader().execute(query, (record_id, *_owner_parameter(owner))))
        return None if row is None else _record(row)

    async def get_many(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        return await self._read(self._get_many_sync, list(dict.fromkeys(record_ids)), owner)

    def _get_many_sync(self, record_ids: list[str], owner: str | None) -> list[FileRecord]:
        query = (
            f"SELECT {_COLUMNS} FROM files WHERE id IN (SELECT value FROM json_each(?))"
            f" {_owned(owner)}"
        )
        rows = self._reader().execute(query, (json.dumps(record_ids), *_owner_parameter(owner)))
        return [_record(row) for row in rows.fetchall()]

    async def page(
        self,
        *,
        limit: int,
        after: str | None,
        order: Order,
        content_type: str | None,
        owner: str | None = None,
    ) -> list[FileRecord]:
        return await self._read(self._page_sync, limit, after, order, content_type, owner)

    def _page_sync(
        self,
        limit: int,
        after: str | None,
        order: Order,
        content_type: str | None,
        owner: str | None,
    ) -> list[FileRecord]:
        conditions: list[str] = []
        parameters: list[object] = []
        if owner is not None:
            conditions.append("owner = ?")
            parameters.append(owner)
        if content_type is not None:
            conditions.append("content_type = ?")
            parameters.append(content_type)
        if after is not None:
            conditions.append("id < ?" if order == "newest" else "id > ?")
            parameters.append(after)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        direction = "DESC" if order == "newest" else "ASC"
        query = f"SELECT {_COLUMNS} FROM files {where} ORDER BY id {direction} LIMIT ?"
        rows = self._reader().execute(query, (*parameters, limit)).fetchall()
        return [_record(row) for row in rows]

    async def by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, FileRecord]:
        return await self._read(self._by_sha256_sync, list(dict.fromkeys(digests)), owner)

    def _by_sha256_sync(self, digests: list[str], owner: str | None) -> dict[str, FileRecord]:
        return _oldest_by_sha256(self._reader(), digests, owner)

    async def ids_by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, str]:
        return await self._read(self._ids_by_sha256_sync, digests, owner)

    def _ids_by_sha256_sync(self, digests: Sequence[str], owner: str | None) -> dict[str, str]:
        wanted = set(digests)
        query = _oldest_by_sha256_query(owner, _ID_COLUMNS)
        rows = _by_key(self._reader(), query, wanted, owner)
        return _first_per_digest(rows, wanted, 0, operator.itemgetter(1))

    async def check(self) -> None:
        await self._read(self._check_sync)

    def _check_sync(self) -> None:
        try:
            self._reader().execute("SELECT 1 FROM files LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise CatalogUnavailable(f"the catalog cannot be read: {error}") from None

    async def stored_names_after(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        return await self._read(self._stored_names_after_sync, after, limit)

    def _stored_names_after_sync(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        rows = self._reader().execute(
            "SELECT stored_name, id FROM files WHERE stored_name > ? ORDER BY stored_name LIMIT ?",
            ("" if after is None else after, limit),
        )
        return [(name, record_id) for name, record_id in rows.fetchall()]

    async def recorded(self, stored_names: Collection[str]) -> set[str]:
        return await self._read(self._recorded_sync, list(stored_names))

    def _recorded_sync(self, stored_names: list[str]) -> set[str]:
        query = (
            "SELECT stored_name FROM files WHERE stored_name IN (SELECT value FROM json_each(?))"
        )
        return {row[0] for row in self._reader().execute(query, (json.dumps(stored_names),))}

    # -- API keys ----------------------------------------------------------------------------

    async def add_key(self, key: KeyRecord) -> bool:
        statement = (
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 8)}) "
            "ON CONFLICT (name) DO NOTHING"
        )
        return await self._write(self._transaction, statement, [_key_row(key)]) == 1

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        # On the event loop's own thread, unlike every other read: it runs on every request
        # with AUTH=keys, and the hop to a reader thread and back cost ~160 µs of CPU where
        # the query costs ~12 (one probe of a small unique index, in a WAL file that never
        # makes a reader wait for the writer).
        # Should it ever wait for a lock (a WAL being recovered), it does so on a reader thread.
        if self._loop_reader is None:
            self._loop_reader = _connect(self.path)
            self._loop_reader.execute("PRAGMA query_only = true")
            self._loop_reader.execute("PRAGMA busy_timeout = 0")
        try:
            row = _one(self._loop_reader.execute(_KEY_BY_HASH, (key_hash,)))
        except sqlite3.OperationalError:
            row = await self._read(lambda: _one(self._reader().execute(_KEY_BY_HASH, (key_hash,))))
        return None if row is None else _key_record(row)

    async def keys(self) -> list[KeyRecord]:
        return await self._read(self._keys_sync)

    def _keys_sync(self) -> list[KeyRecord]:
        rows = self._reader().execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [_key_record(row) for row in rows]

    def keys_generation(self) -> int | None:
        # The host-wide counter beside the file (every process of a WAL catalog is on this
        # host), which a revocation changes around its commit: see catalog/changes.py.
        return None if self._key_changes is None else self._key_changes.stable()

    async def revoke_key(self, name: str) -> bool:
        return await self._write(self._revoke_key_sync, name)

    def _revoke_key_sync(self, name: str) -> bool:
        assert self._key_changes is not None, "SqliteCatalog used before open()"
        with self._key_changes.changing():
            return self._transaction("DELETE FROM api_keys WHERE name = ?", [(name,)]) == 1

    async def touch_key(self, name: str, when: datetime) -> None:
        statement = "UPDATE api_keys SET last_used_us = ? WHERE name = ?"
        await self._write(self._transaction, statement, [(_us(when), name)])

    # -- quotas ------------------------------------------------------------------------------

    async def usage(self, owner: str) -> int:
        return await self._read(lambda: self._usage_sync(self._reader(), owner, "", _now_us()))

    def _usage_sync(
        self, connection: sqlite3.Connection, owner: str, besides: str, now_us: int
    ) -> int:
        stored = _one(connection.execute("SELECT bytes FROM owner_usage WHERE owner = ?", (owner,)))
        (reserved,) = connection.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM quota_reservations "
            "WHERE owner = ? AND id <> ? AND lease_until_us > ?",
            (owner, besides, now_us),
        ).fetchall()[0]
        return (stored[0] if stored else 0) + int(reserved)

    async def reserve(
        self, reservation: str, owner: str, *, need: int, want: int, quota: int, lease: datetime
    ) -> int | None:
        return await self._write(
            self._reserve_sync, reservation, owner, need, want, quota, _us(lease)
        )

    def _reserve_sync(
        self, reservation: str, owner: str, need: int, want: int, quota: int, lease_us: int
    ) -> int | None:
        connection = self._write_connection
        assert connection is not None, "SqliteCatalog used before open()"
        connection.execute("BEGIN IMMEDIATE")  # the write lock: reservations one at a time
        try:
            used = self._usage_sync(connection, owner, reservation, _now_us())
            granted = want if used + want <= quota else need if used + need <= quota else None
            if granted is not None:
                connection.execute(
                    "INSERT INTO quota_reservations VALUES (?, ?, ?, ?) ON CONFLICT (id) DO "
                    "UPDATE SET bytes = excluded.bytes, lease_until_us = excluded.lease_until_us",
                    (reservation, owner, granted, lease_us),
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return granted

    async def release(self, reservation: str) -> None:
        statement = "DELETE FROM quota_reservations WHERE id = ? OR lease_until_us <= ?"
        await self._write(self._transaction, statement, [(reservation, _now_us())])

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock
