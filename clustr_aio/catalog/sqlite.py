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
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from clustr_aio.catalog.base import FileRecord, Order

__all__ = ["MIGRATIONS", "SqliteCatalog"]

log = logging.getLogger("clustr_aio.catalog")
_T = TypeVar("_T")

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
)
"""Schema versions: ``user_version`` N means the first N have been applied. Append only."""

_COLUMNS: Final = (
    "id, stored_name, original_name, size, content_type, sha256, created_us, width, height, owner,"
    " orientation, metadata_removed"
)
_PLACEHOLDERS: Final = ", ".join("?" * 12)
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
    return FileRecord(
        id=row[0],
        stored_name=row[1],
        original_name=row[2],
        size=row[3],
        content_type=row[4],
        sha256=row[5],
        created_at=datetime.fromtimestamp(row[6] / 1_000_000, UTC),
        width=row[7],
        height=row[8],
        owner=row[9],
        orientation=row[10],
        metadata_removed=bool(row[11]),
    )


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE itself.
    connection = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return connection


class SqliteCatalog:
    """Open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="clustr-catalog-w")
        self._readers = ThreadPoolExecutor(_READERS, thread_name_prefix="clustr-catalog-r")
        self._write_connection: sqlite3.Connection | None = None
        self._local = threading.local()
        self._read_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

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

    def _open_locked(self) -> None:
        connection = _connect(self.path)
        self._write_connection = connection
        connection.execute("PRAGMA journal_mode = WAL")  # persistent; outside any transaction
        connection.execute("PRAGMA synchronous = NORMAL")  # in WAL: durable at checkpoints
        connection.execute("BEGIN IMMEDIATE")
        try:
            version: int = connection.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
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
        update = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", "))
        statement = (
            f"INSERT INTO files ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
            f"ON CONFLICT (stored_name) DO UPDATE SET {update}"
        )
        await self._write(self._transaction, statement, [_row(r) for r in records])

    async def adopt(self, records: Sequence[FileRecord]) -> int:
        statement = (
            f"INSERT INTO files ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
            "ON CONFLICT (stored_name) DO NOTHING"
        )
        return await self._write(self._transaction, statement, [_row(r) for r in records])

    async def delete(self, record_ids: Sequence[str]) -> list[FileRecord]:
        return await self._write(self._delete_sync, list(record_ids))

    def _delete_sync(self, record_ids: list[str]) -> list[FileRecord]:
        connection = self._write_connection
        assert connection is not None, "SqliteCatalog used before open()"
        deleted: list[FileRecord] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for record_id in record_ids:
                row = connection.execute(
                    f"DELETE FROM files WHERE id = ? RETURNING {_COLUMNS}", (record_id,)
                ).fetchone()
                if row is not None:
                    deleted.append(_record(row))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return deleted

    async def get(self, record_id: str) -> FileRecord | None:
        return await self._read(self._get_sync, record_id)

    def _get_sync(self, record_id: str) -> FileRecord | None:
        query = f"SELECT {_COLUMNS} FROM files WHERE id = ?"
        row = self._reader().execute(query, (record_id,)).fetchone()
        return None if row is None else _record(row)

    async def page(
        self, *, limit: int, after: str | None, order: Order, content_type: str | None
    ) -> list[FileRecord]:
        return await self._read(self._page_sync, limit, after, order, content_type)

    def _page_sync(
        self, limit: int, after: str | None, order: Order, content_type: str | None
    ) -> list[FileRecord]:
        conditions: list[str] = []
        parameters: list[object] = []
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

    async def by_sha256(self, digests: Sequence[str]) -> dict[str, FileRecord]:
        return await self._read(self._by_sha256_sync, list(dict.fromkeys(digests)))

    def _by_sha256_sync(self, digests: list[str]) -> dict[str, FileRecord]:
        # One query for them all: the digests as one JSON array parameter, each looked up in
        # the sha256 index; the oldest record per digest is the first in id order.
        query = (
            f"SELECT {_COLUMNS} FROM files WHERE sha256 IN (SELECT value FROM json_each(?)) "
            "ORDER BY id"
        )
        found: dict[str, FileRecord] = {}
        for row in self._reader().execute(query, (json.dumps(digests),)):
            if row[5] not in found:
                found[row[5]] = _record(row)
        return found

    async def stored_names(self) -> dict[str, str]:
        return await self._read(self._stored_names_sync)

    def _stored_names_sync(self) -> dict[str, str]:
        rows = self._reader().execute("SELECT stored_name, id FROM files")
        return dict(rows.fetchall())

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
