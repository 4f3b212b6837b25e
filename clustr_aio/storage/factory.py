"""The storage the settings ask for, opened and closed around the application's life.

One function, so that ``create_app`` never names a backend: ``STORAGE=local`` is the upload
folder (:mod:`.local`), ``STORAGE=s3`` a bucket shared by every instance (:mod:`.s3`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from clustr_aio.runtime.memory import fix_mmap_threshold
from clustr_aio.settings import Settings
from clustr_aio.storage.base import Storage
from clustr_aio.storage.local import LocalStorage

if TYPE_CHECKING:
    from clustr_aio.storage.s3 import S3Storage
    from clustr_aio.storage.s3.client import S3Config

__all__ = ["open_storage", "preload_storage", "s3_config"]


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The configured storage, ready: for the local folder, created if missing, with what dead
    processes left in ``.incoming`` swept away; for a bucket, a client (aiobotocore only then)."""
    storage: LocalStorage | S3Storage
    if settings.storage == "s3":
        from clustr_aio.storage.s3 import S3Storage

        # Parts and bodies of a MiB and more are mapped and unmapped, so that what was sent is
        # given back: the stated memory bound holds (storage/s3/upload.py: memory_bound).
        fix_mmap_threshold(1024 * 1024)
        storage = S3Storage(s3_config(settings))
    else:
        storage = LocalStorage(
            settings.upload_folder, fsync=settings.fsync, min_free_space=settings.min_free_space
        )
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


def preload_storage(settings: Settings) -> None:
    """Import the backend's modules now, in a supervisor about to fork its workers
    (``WORKERS`` > 1): they inherit them and share their pages, rather than each worker
    importing a copy of its own (aiobotocore and botocore: 10 MiB a process)."""
    if settings.storage == "s3":
        import clustr_aio.storage.s3  # noqa: F401


def s3_config(settings: Settings) -> S3Config:
    from clustr_aio.storage.s3.client import S3Config

    assert settings.s3_bucket is not None, "STORAGE=s3 without S3_BUCKET passed validation"
    return S3Config(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        part_size=settings.s3_part_size,
        serve=settings.s3_serve,
        orphan_grace=settings.s3_orphan_grace,
        connections=max(16, settings.max_concurrent_uploads),
    )
