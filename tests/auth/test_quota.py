"""Quota reservations in the catalog, without HTTP, on SQLite and PostgreSQL: usage kept by
the schema's triggers, reservations racing from several connections (as from several
processes), leases that lapse."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clustr_aio.catalog.base import Catalog
from clustr_aio.catalog.factory import open_catalog
from clustr_aio.settings import Settings
from tests.catalog.test_catalog import record
from tests.conftest import make_settings

LEASE = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture
def settings(upload_dir: Path, database_url: str | None) -> Settings:
    return make_settings(upload_dir, database_url=database_url)


@pytest.fixture
async def catalog(settings: Settings) -> AsyncIterator[Catalog]:
    async with open_catalog(settings) as opened:
        yield opened


async def test_usage_follows_the_owners_files(catalog: Catalog) -> None:
    a = dataclasses.replace(record("a.jpg"), size=100, owner="alice")
    b = dataclasses.replace(record("b.jpg"), size=50, owner="alice")
    c = dataclasses.replace(record("c.jpg"), size=7, owner="bob")
    await catalog.add([a, b, c, record("open.jpg")])
    assert (await catalog.usage("alice"), await catalog.usage("bob")) == (150, 7)
    await catalog.delete([a.id])
    assert await catalog.usage("alice") == 50
    await catalog.add([dataclasses.replace(b, size=60)])  # replaced (an adopted record)
    assert await catalog.usage("alice") == 60
    assert await catalog.usage("nobody") == 0


async def test_a_reservation_grants_what_it_wants_or_what_it_needs(catalog: Catalog) -> None:
    await catalog.add([dataclasses.replace(record("a.jpg"), size=600, owner="o")])
    assert await catalog.reserve("r1", "o", need=100, want=300, quota=1000, lease=LEASE) == 300
    assert await catalog.usage("o") == 900
    assert await catalog.reserve("r2", "o", need=100, want=200, quota=1000, lease=LEASE) == 100
    assert await catalog.reserve("r3", "o", need=1, want=1, quota=1000, lease=LEASE) is None
    assert await catalog.reserve("r1", "o", need=300, want=400, quota=1000, lease=LEASE) == 300
    await catalog.release("r1")
    await catalog.release("r2")
    assert await catalog.usage("o") == 600


async def test_reservations_racing_from_many_connections_never_overbook(
    settings: Settings,
) -> None:
    async with AsyncExitStack() as stack:
        catalogs = [await stack.enter_async_context(open_catalog(settings)) for _ in range(4)]
        granted = await asyncio.gather(
            *(
                catalogs[n % 4].reserve(f"r{n}", "o", need=100, want=100, quota=1000, lease=LEASE)
                for n in range(30)
            )
        )
    assert granted.count(100) == 10
    assert granted.count(None) == 20


async def test_a_lapsed_lease_stops_counting(catalog: Catalog) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert await catalog.reserve("dead", "o", need=900, want=900, quota=1000, lease=past) == 900
    assert await catalog.usage("o") == 0
    assert await catalog.reserve("live", "o", need=900, want=900, quota=1000, lease=LEASE) == 900
    await catalog.release("live")  # also sweeps lapsed ones
