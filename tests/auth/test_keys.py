"""API keys in the catalog, without HTTP, on SQLite and PostgreSQL: only a hash stored, made,
found, touched, revoked, expired; kept by a keyring until a revocation anywhere; scopes and
durations parsed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from clustr_aio.auth.keys import KeyRing, create_key, hash_key, parse_duration
from clustr_aio.auth.scopes import allows, parse_scopes
from clustr_aio.catalog.base import Catalog
from clustr_aio.catalog.factory import SQLITE_FILE, open_catalog
from clustr_aio.domain.errors import BadRequest, Conflict, Unauthorized
from clustr_aio.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def catalog_settings(upload_dir: Path, database_url: str | None) -> Settings:
    return make_settings(upload_dir, database_url=database_url)


@pytest.fixture
async def catalog(catalog_settings: Settings) -> AsyncIterator[Catalog]:
    async with open_catalog(catalog_settings) as opened:
        yield opened


@pytest.fixture
async def other_process(catalog_settings: Settings) -> AsyncIterator[Catalog]:
    """The same catalog opened again, as another worker or the CLI has it."""
    async with open_catalog(catalog_settings) as opened:
        yield opened


async def test_a_key_is_stored_only_as_its_hash(catalog: Catalog, upload_dir: Path) -> None:
    key, record = await create_key(catalog, "phone", "upload,read", quota=10)
    assert key.startswith("clustr_")
    assert len(key) == 7 + 43
    assert record.key_hash == hash_key(key)
    assert record.owner == "phone"
    assert await catalog.keys() == [record]
    assert await catalog.key_by_hash(hash_key(key)) == record
    if (upload_dir / SQLITE_FILE).exists():
        dump = "\n".join(sqlite3.connect(upload_dir / SQLITE_FILE).iterdump())
        assert key not in dump
        assert key[7:] not in dump


async def test_names_are_unique_and_checked(catalog: Catalog) -> None:
    await create_key(catalog, "phone", "read")
    with pytest.raises(Conflict):
        await create_key(catalog, "phone", "upload")
    for name, scopes in (("bad name", "read"), ("ok", "everything"), ("ok", "")):
        with pytest.raises(BadRequest):
            await create_key(catalog, name, scopes)


async def test_the_keyring_authenticates_touches_and_refuses(catalog: Catalog) -> None:
    now = [0.0]
    ring = KeyRing(lambda: catalog, clock=lambda: now[0])
    key, _ = await create_key(catalog, "phone", "read", owner="alice")
    principal = await ring.authenticate(key)
    assert (principal.name, principal.owner, principal.sees) == ("phone", "alice", "alice")
    (listed,) = await catalog.keys()
    assert listed.last_used_at is not None
    for wrong in (None, "", key + "x", "clustr_" + "A" * 43):
        with pytest.raises(Unauthorized):
            await ring.authenticate(wrong)
    assert await catalog.revoke_key("phone")
    assert not await catalog.revoke_key("phone")
    with pytest.raises(Unauthorized):
        await ring.authenticate(key)
    expired, _ = await create_key(catalog, "old", "read", expires_in=timedelta(seconds=-1))
    with pytest.raises(Unauthorized, match="expired"):
        await ring.authenticate(expired)


async def test_a_key_kept_by_a_keyring_is_refused_once_another_process_revokes_it(
    catalog: Catalog, other_process: Catalog
) -> None:
    ring = KeyRing(lambda: catalog)
    key, _ = await create_key(catalog, "phone", "read")
    other, _ = await create_key(catalog, "tablet", "read")
    for _ in range(3):
        assert (await ring.authenticate(key)).name == "phone"
        assert (await ring.authenticate(other)).name == "tablet"
    assert await other_process.revoke_key("phone")
    with pytest.raises(Unauthorized, match="not valid"):
        await ring.authenticate(key)
    assert (await ring.authenticate(other)).name == "tablet"  # the others still admitted
    again, _ = await create_key(other_process, "phone", "read")  # the name free again
    assert (await ring.authenticate(again)).name == "phone"
    with pytest.raises(Unauthorized, match="not valid"):
        await ring.authenticate(key)


async def test_a_kept_key_is_not_looked_up_again_until_a_revocation(
    catalog: Catalog, other_process: Catalog, upload_dir: Path, database_url: str | None
) -> None:
    """What keeps a worker from asking the catalog on every request: the key stays admitted
    though its record went behind the catalog's back (no revocation said so), until a
    revocation of any key anywhere."""
    if database_url is not None:
        assert catalog.keys_generation() is None  # PostgreSQL: looked up on every request
        return
    ring = KeyRing(lambda: catalog)
    key, _ = await create_key(catalog, "phone", "read")
    await create_key(catalog, "unused", "read")
    before = catalog.keys_generation()
    assert before is not None
    await ring.authenticate(key)
    with sqlite3.connect(upload_dir / SQLITE_FILE) as behind:
        behind.execute("DELETE FROM api_keys WHERE name = 'phone'")
    assert (await ring.authenticate(key)).name == "phone"  # kept: no query
    assert await other_process.revoke_key("unused")
    assert catalog.keys_generation() not in (None, before)
    with pytest.raises(Unauthorized, match="not valid"):
        await ring.authenticate(key)


async def test_a_kept_key_still_expires(catalog: Catalog) -> None:
    ring = KeyRing(lambda: catalog)
    key, _ = await create_key(catalog, "brief", "read", expires_in=timedelta(seconds=1))
    assert (await ring.authenticate(key)).name == "brief"
    await asyncio.sleep(1.05)
    with pytest.raises(Unauthorized, match="'brief' expired"):
        await ring.authenticate(key)


def test_scopes_and_durations() -> None:
    assert parse_scopes("upload, READ") == {"upload", "read"}
    assert allows(frozenset({"admin"}), ("delete",))
    assert allows(frozenset({"read"}), ("upload", "read"))
    assert not allows(frozenset({"read"}), ("upload",))
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("0d", "30", "d", "1y"):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(bad)
