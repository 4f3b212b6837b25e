"""The catalog in PostgreSQL (``DATABASE_URL=postgresql://…``): for many processes and
machines, through an asyncpg pool.

Migrations run at open under a transaction-scoped advisory lock: of several processes starting
at once, one migrates while the others wait, then find ``clustr_schema.version`` current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from clustr_aio.catalog.base import (
    KEY_DIGITS,
    SHA256_AT,
    FileRecord,
    KeyRecord,
    Order,
    row_record,
)
from clustr_aio.domain.errors import CatalogUnavailable

__all__ = ["MIGRATIONS", "PostgresCatalog"]

log = logging.getLogger("clustr_aio.catalog")

_KEY_OF: Final = f"('x' || substr({{}}, 1, {KEY_DIGITS}))::bit({4 * KEY_DIGITS})::bigint"
"""A digest's key (:func:`~clustr_aio.catalog.base.digest_key`) in SQL, of the text ``{}``."""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the files.
    """
    CREATE TABLE files (
        id uuid PRIMARY KEY,
        stored_name text COLLATE "C" NOT NULL UNIQUE,
        original_name text NOT NULL,
        size bigint NOT NULL,
        content_type text NOT NULL,
        sha256 text COLLATE "C" NOT NULL,
        created_at timestamptz NOT NULL,
        width integer,
        height integer,
        owner text
    );
    CREATE INDEX files_by_sha256 ON files (sha256);
    CREATE INDEX files_by_type ON files (content_type, id);
    """,
    # 2: what the image check reads (width and height were there already).
    """
    ALTER TABLE files ADD COLUMN orientation smallint;
    ALTER TABLE files ADD COLUMN metadata_removed boolean NOT NULL DEFAULT false;
    """,
    # 3: API keys, files by owner, each owner's bytes (kept by a trigger) and quota reservations.
    """
    CREATE TABLE api_keys (
        name text COLLATE "C" PRIMARY KEY,
        key_hash text COLLATE "C" NOT NULL UNIQUE,
        scopes text[] NOT NULL,
        owner text NOT NULL,
        created_at timestamptz NOT NULL,
        last_used_at timestamptz,
        expires_at timestamptz,
        quota bigint
    );
    CREATE INDEX files_by_owner ON files (owner, id);
    CREATE TABLE owner_usage (owner text PRIMARY KEY, bytes bigint NOT NULL);
    INSERT INTO owner_usage
        SELECT owner, SUM(size) FROM files WHERE owner IS NOT NULL GROUP BY owner;
    CREATE FUNCTION clustr_owner_usage() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.owner IS NOT NULL THEN
            UPDATE owner_usage SET bytes = bytes - OLD.size WHERE owner = OLD.owner;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.owner IS NOT NULL THEN
            INSERT INTO owner_usage VALUES (NEW.owner, NEW.size)
                ON CONFLICT (owner) DO UPDATE SET bytes = owner_usage.bytes + excluded.bytes;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER files_owner_usage AFTER INSERT OR DELETE OR UPDATE OF owner, size ON files
        FOR EACH ROW EXECUTE FUNCTION clustr_owner_usage();
    CREATE TABLE quota_reservations (
        id text COLLATE "C" PRIMARY KEY,
        owner text NOT NULL,
        bytes bigint NOT NULL,
        lease_until timestamptz NOT NULL
    );
    CREATE INDEX quota_reservations_by_owner ON quota_reservations (owner);
    """,
    # 4: a digest's oldest record in one index probe (sha256 = $1 ORDER BY id LIMIT 1), whatever
    # the planner's statistics say. With (sha256) alone, a table not analyzed yet (just filled,
    # or just migrated) got a plan that walked the primary key in id order looking for each
    # digest: a check of 10,000 new digests among 1,000,000 records ran for over 10 minutes.
    # (SQLite's index is this already: a WITHOUT ROWID table's index ends with the key.)
    """
    CREATE INDEX files_by_sha256_id ON files (sha256, id);
    DROP INDEX files_by_sha256;
    """,
    # 5: digests looked up by their key (digest_key: the first 60 bits as an integer) instead
    # of their 64 characters of hex: index entries of 8 + 16 bytes instead of 65 + 16, fewer
    # pages to read or keep in shared buffers (51 MB for 1,000,000 records). A generated
    # column, computed by PostgreSQL on every insert; the look-up then compares the whole
    # digest of the few records it finds.
    f"""
    ALTER TABLE files ADD COLUMN sha256_key bigint GENERATED ALWAYS AS
        ({_KEY_OF.format("sha256")}) STORED;
    CREATE INDEX files_by_sha256_key ON files (sha256_key, id);
    DROP INDEX files_by_sha256_id;
    """,
)
"""Schema versions: ``clustr_schema.version`` N means the first N have been applied. Text keys
are compared byte by byte (``COLLATE "C"``): no locale's rules, which cost a strcoll per
comparison in every index lookup and mean nothing for hex digests and file names."""

_UNREACHABLE: Final = (
    OSError,  # refused, no socket file, reset
    TimeoutError,
    asyncpg.PostgresConnectionError,  # the connection went away under a query
    asyncpg.OperatorInterventionError,  # shutting down, starting up
    asyncpg.InterfaceError,  # the connection is closed
)
_CHECK_TIMEOUT: Final = 2.0
"""Seconds /readyz waits for the database (a pool connection and one query)."""
_MIGRATION_LOCK: Final = 0x636C757374720001  # "clustr" + 1: the advisory lock of migrations
_MAINTENANCE_LOCK: Final = 0x636C757374720002
_DEDUPE_LOCKS: Final = 0x636C757374720100  # + a digest's first byte: add_unique's locks
_QUOTA_LOCKS: Final = 0x636C7573  # "clus": the first key of each owner's quota lock
_KEY_COLUMNS: Final = "name, key_hash, scopes, owner, created_at, last_used_at, expires_at, quota"
_COLUMNS: Final = (
    "id, stored_name, original_name, size, content_type, sha256, created_at, width, height, owner,"
    " orientation, metadata_removed"
)
_COLUMN_NAMES: Final = _COLUMNS.split(", ")
_ID_COLUMNS: Final = "sha256, id::text"
"""What the check reads of each record it finds (:meth:`PostgresCatalog.ids_by_sha256`)."""
_UNNEST: Final = (
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], "
    "$6::text[], $7::timestamptz[], $8::integer[], $9::integer[], $10::text[], $11::smallint[], "
    "$12::boolean[])"
)
_UPSERT: Final = (
    f"INSERT INTO files ({_COLUMNS}) {_UNNEST} ON CONFLICT (stored_name) DO UPDATE SET "
    f"{', '.join(f'{c} = excluded.{c}' for c in _COLUMN_NAMES)}"
)
"""An upload's records: one whose stored name is catalogued already replaces that record (the
start-up reconciliation may have adopted the file between its link and this commit)."""


def _record(row: asyncpg.Record) -> FileRecord:
    """A row of ``SELECT {_COLUMNS}`` (by position: by name, each field is a lookup in the
    row's name map first)."""
    return row_record(row, record_id=str(row[0]), created_at=row[6], metadata_removed=row[11])


def _key_record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        name=row["name"],
        key_hash=row["key_hash"],
        scopes=frozenset(row["scopes"]),
        owner=row["owner"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        quota=row["quota"],
    )


def _oldest_by_sha256(columns: str, owner: str | None) -> str:
    """``columns`` of each digest's oldest record (of ``owner``'s, when given: parameter $2),
    and of any other digest that shares a key with one of them (the caller drops those). The
    digests come as one text, comma-separated (:func:`_digests_text`), which PostgreSQL
    splits, and their keys, computed as the generated column's, are looked up in one index
    scan (``= ANY``; the btree sorts the keys and walks them in order).

    For 10,000 digests among 1,000,000 records (a tenth stored), against the text[] of 10,000
    items sorted in Python and 10,000 ``LATERAL ... LIMIT 1`` probes before (one connection,
    the shapes interleaved, loaded machine, medians): one text and no sort, 5-10 ms less of
    the client's CPU; one index scan, 8-10 ms less of PostgreSQL's. The array is a subquery's,
    so the planner never sees its length: it plans the index scan for a few keys, as it does
    for the table just filled and never analyzed (a bitmap scan of the same index), never the
    parallel sequential scan (350-650 ms) it chose for a known array of 10,000 keys.
    ``DISTINCT ON`` keeps one row per digest however many records share it (DEDUPE=off)."""
    return (
        f"SELECT DISTINCT ON (files.sha256) {columns} FROM files WHERE sha256_key = ANY(ARRAY("
        f"SELECT {_KEY_OF.format('d')} FROM unnest(string_to_array($1, ',')) AS d)) "
        f"{_owned(owner, 2)} ORDER BY files.sha256, files.id"  # the uuid, not an id::text column
    )


def _digests_text(digests: Iterable[str]) -> str:
    """Digests (hex: no commas) as the one parameter :func:`_oldest_by_sha256` splits."""
    return ",".join(digests)


def _owned(owner: str | None, number: int) -> str:
    """The condition that keeps one owner's records only (parameter ``$number``)."""
    return "" if owner is None else f"AND owner = ${number}"


def _owner_parameter(owner: str | None) -> tuple[str, ...]:
    return () if owner is None else (owner,)


def _columns(records: Sequence[FileRecord]) -> list[list[Any]]:
    """The records as one array per column, for one ``unnest`` insert (a round trip in all)."""
    return [
        [uuid.UUID(r.id) for r in records],
        [r.stored_name for r in records],
        [r.original_name for r in records],
        [r.size for r in records],
        [r.content_type for r in records],
        [r.sha256 for r in records],
        [r.created_at for r in records],
        [r.width for r in records],
        [r.height for r in records],
        [r.owner for r in records],
        [r.orientation for r in records],
        [r.metadata_removed for r in records],
    ]


def _uuids(record_ids: Sequence[str]) -> list[uuid.UUID]:
    return [uuid.UUID(record_id) for record_id in record_ids]


_USAGE: Final = (
    "SELECT COALESCE((SELECT bytes FROM owner_usage WHERE owner = $1), 0) + COALESCE(("
    "SELECT SUM(bytes) FROM quota_reservations WHERE owner = $1 AND id <> $2 "
    "AND lease_until > now()), 0)"
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back, past rolling back an open transaction
    (which asyncpg always does): nothing. Its default reset is a round trip after every query
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), a third of a page's
    query time, undoing session state this catalog never leaves: it sets no session
    variable, listens to nothing, keeps no cursor, and the one session lock it takes
    (:meth:`PostgresCatalog.exclusive`) goes with its session when it may not have been released."""


class PostgresCatalog:
    """Open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PostgresCatalog used before open()"
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=self._min_size, max_size=self._max_size, reset=_keep_session
        )
        try:
            await self._migrate()
        except BaseException:
            await self._pool.close()
            raise

    async def _migrate(self) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS clustr_schema (version integer NOT NULL)"
            )
            version = await connection.fetchval("SELECT version FROM clustr_schema")
            if version is None:
                await connection.execute("INSERT INTO clustr_schema VALUES (0)")
                version = 0
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await connection.execute(script)
                log.info("catalog: schema migrated to version %d", number)
            await connection.execute("UPDATE clustr_schema SET version = $1", len(MIGRATIONS))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def add(self, records: Sequence[FileRecord]) -> None:
        async with self._reachable():
            await self.pool.execute(_UPSERT, *_columns(records))

    async def add_unique(
        self, records: Sequence[FileRecord], *, all_or_none: bool, owner: str | None = None
    ) -> dict[str, FileRecord]:
        digests = [r.sha256 for r in records]
        # Transaction locks on the digests' buckets (their first byte: at most 256 locks, in
        # one order, so two batches never deadlock), taken before the look-up: an upload of
        # the same bytes commits before ours looks, or looks after ours committed.
        buckets = sorted({_DEDUPE_LOCKS + int(d[:2], 16) for d in digests})
        async with (
            self._reachable(),
            self.pool.acquire() as connection,
            connection.transaction(),
        ):
            await connection.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k",
                buckets,
            )
            rows = await connection.fetch(
                _oldest_by_sha256(_COLUMNS, owner),
                _digests_text(digests),
                *_owner_parameter(owner),
            )
            wanted = set(digests)
            taken = {row[SHA256_AT]: _record(row) for row in rows if row[SHA256_AT] in wanted}
            fresh = [r for r in records if r.sha256 not in taken]
            if fresh and not (taken and all_or_none):
                await connection.execute(_UPSERT, *_columns(fresh))
        return taken

    async def adopt(self, records: Sequence[FileRecord]) -> int:
        status = await self.pool.execute(
            f"INSERT INTO files ({_COLUMNS}) {_UNNEST} ON CONFLICT (stored_name) DO NOTHING",
            *_columns(records),
        )
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"

    async def get(self, record_id: str, *, owner: str | None = None) -> FileRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM files WHERE id = $1 {_owned(owner, 2)}",
            uuid.UUID(record_id),
            *_owner_parameter(owner),
        )
        return None if row is None else _record(row)

    async def get_many(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM files WHERE id = ANY($1::uuid[]) {_owned(owner, 2)}",
            _uuids(record_ids),
            *_owner_parameter(owner),
        )
        return [_record(row) for row in rows]

    async def page(
        self,
        *,
        limit: int,
        after: str | None,
        order: Order,
        content_type: str | None,
        owner: str | None = None,
    ) -> list[FileRecord]:
        conditions: list[str] = []
        parameters: list[object] = []
        if owner is not None:
            parameters.append(owner)
            conditions.append(f"owner = ${len(parameters)}")
        if content_type is not None:
            parameters.append(content_type)
            conditions.append(f"content_type = ${len(parameters)}")
        if after is not None:
            parameters.append(uuid.UUID(after))
            conditions.append(f"id {'<' if order == 'newest' else '>'} ${len(parameters)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        direction = "DESC" if order == "newest" else "ASC"
        parameters.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM files {where} ORDER BY id {direction} "
            f"LIMIT ${len(parameters)}",
            *parameters,
        )
        return [_record(row) for row in rows]

    async def by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, FileRecord]:
        wanted = set(digests)
        rows = await self.pool.fetch(
            _oldest_by_sha256(_COLUMNS, owner), _digests_text(wanted), *_owner_parameter(owner)
        )
        return {row[SHA256_AT]: _record(row) for row in rows if row[SHA256_AT] in wanted}

    async def ids_by_sha256(
        self, digests: Sequence[str], *, owner: str | None = None
    ) -> dict[str, str]:
        wanted = set(digests)
        rows = await self.pool.fetch(
            _oldest_by_sha256(_ID_COLUMNS, owner),
            _digests_text(wanted),
            *_owner_parameter(owner),
        )
        return {row[0]: row[1] for row in rows if row[0] in wanted}

    async def delete(
        self, record_ids: Sequence[str], *, owner: str | None = None
    ) -> list[FileRecord]:
        rows = await self.pool.fetch(
            f"DELETE FROM files WHERE id = ANY($1::uuid[]) {_owned(owner, 2)} RETURNING {_COLUMNS}",
            _uuids(record_ids),
            *_owner_parameter(owner),
        )
        return [_record(row) for row in rows]

    async def check(self) -> None:
        async with self._reachable(), asyncio.timeout(_CHECK_TIMEOUT):
            await self.pool.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        """The database's being down, restarted or unreachable as :class:`CatalogUnavailable`:
        a 503, busy for now, not a 500 (the pool replaces a closed connection by itself)."""
        try:
            yield
        except _UNREACHABLE as error:
            reason = str(error) or type(error).__name__
            raise CatalogUnavailable(
                f"the catalog's database cannot be reached: {reason}"
            ) from None

    # -- API keys ----------------------------------------------------------------------------

    async def add_key(self, key: KeyRecord) -> bool:
        status = await self.pool.execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (name) DO NOTHING",
            key.name,
            key.key_hash,
            sorted(key.scopes),
            key.owner,
            key.created_at,
            key.last_used_at,
            key.expires_at,
            key.quota,
        )
        return bool(status == "INSERT 0 1")

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
        )
        return None if row is None else _key_record(row)

    def keys_generation(self) -> None:
        # Several hosts may share this database, and no host-local signal reaches them all:
        # every request looks its key up (one indexed query).
        return None

    async def keys(self) -> list[KeyRecord]:
        rows = await self.pool.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [_key_record(row) for row in rows]

    async def revoke_key(self, name: str) -> bool:
        status = await self.pool.execute("DELETE FROM api_keys WHERE name = $1", name)
        return bool(status == "DELETE 1")

    async def touch_key(self, name: str, when: datetime) -> None:
        await self.pool.execute("UPDATE api_keys SET last_used_at = $1 WHERE name = $2", when, name)

    # -- quotas ------------------------------------------------------------------------------

    async def usage(self, owner: str) -> int:
        return int(await self.pool.fetchval(_USAGE, owner, ""))

    async def reserve(
        self, reservation: str, owner: str, *, need: int, want: int, quota: int, lease: datetime
    ) -> int | None:
        async with self.pool.acquire() as connection, connection.transaction():
            # One reservation at a time per owner, on every machine: the usage read below
            # then includes every reservation granted before this one.
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _QUOTA_LOCKS, owner
            )
            used = int(await connection.fetchval(_USAGE, owner, reservation))
            granted = want if used + want <= quota else need if used + need <= quota else None
            if granted is not None:
                await connection.execute(
                    "INSERT INTO quota_reservations VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO "
                    "UPDATE SET bytes = excluded.bytes, lease_until = excluded.lease_until",
                    reservation,
                    owner,
                    granted,
                    lease,
                )
        return granted

    async def release(self, reservation: str) -> None:
        await self.pool.execute(
            "DELETE FROM quota_reservations WHERE id = $1 OR lease_until <= now()", reservation
        )

    async def stored_names_after(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT stored_name, id FROM files WHERE stored_name > $1 ORDER BY stored_name"
            " LIMIT $2",
            "" if after is None else after,
            limit,
        )
        return [(row["stored_name"], str(row["id"])) for row in rows]

    async def recorded(self, stored_names: Collection[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT stored_name FROM files WHERE stored_name = ANY($1::text[])", list(stored_names)
        )
        return {row["stored_name"] for row in rows}

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        async with self.pool.acquire() as connection:
            with _ending_session_on_failure(connection):
                held = bool(
                    await connection.fetchval("SELECT pg_try_advisory_lock($1)", _MAINTENANCE_LOCK)
                )
            try:
                yield held
            finally:
                if held:
                    with _ending_session_on_failure(connection):
                        await connection.execute("SELECT pg_advisory_unlock($1)", _MAINTENANCE_LOCK)


@contextlib.contextmanager
def _ending_session_on_failure(connection: PoolConnectionProxy[Any]) -> Iterator[None]:
    """Around taking and releasing :meth:`PostgresCatalog.exclusive`'s session lock: when
    either fails or is cancelled, the lock may be held with no one to release it, so the
    session ends, which releases it (the pool does not reset connections: :func:`_keep_session`)."""
    try:
        yield
    except BaseException:
        connection.terminate()
        raise
