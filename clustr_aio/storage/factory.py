"""The storage the settings ask for, opened and closed around the application's life.

One function, so that ``create_app`` never names a backend: another backend (S3-compatible
object storage) is one more branch here and one module beside :mod:`.local`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from clustr_aio.settings import Settings
from clustr_aio.storage.base import Storage
from clustr_aio.storage.local import LocalStorage

__all__ = ["open_storage"]


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The configured storage, ready: for the local folder, created if missing, with what dead
    processes left in ``.incoming`` swept away."""
    storage = LocalStorage(
        settings.upload_folder, fsync=settings.fsync, min_free_space=settings.min_free_space
    )
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()
