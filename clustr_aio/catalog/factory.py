"""The catalog the settings ask for, opened (schema migrated) and closed around the
application's life. ``DATABASE_URL`` unset: SQLite in the upload folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from clustr_aio.catalog.base import Catalog
from clustr_aio.settings import Settings

__all__ = ["SQLITE_FILE", "open_catalog"]

SQLITE_FILE: Final = ".catalog.sqlite3"
"""The embedded catalog's file in UPLOAD_FOLDER: a dot-name, never served."""


@asynccontextmanager
async def open_catalog(settings: Settings) -> AsyncIterator[Catalog]:
    url = settings.database_url
    catalog: Catalog
    if url is not None and urlsplit(url).scheme.lower() in ("postgresql", "postgres"):
        from clustr_aio.catalog.postgres import PostgresCatalog  # asyncpg only when asked for

        postgres = PostgresCatalog(url)
        await postgres.open()
        catalog = postgres
    else:
        from clustr_aio.catalog.sqlite import SqliteCatalog

        path = settings.upload_folder / SQLITE_FILE
        if url is not None:
            path = Path(unquote(urlsplit(url).path))
        sqlite = SqliteCatalog(path, durable=settings.fsync)
        await sqlite.open()
        catalog = sqlite
    try:
        yield catalog
    finally:
        await catalog.close()
