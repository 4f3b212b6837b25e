"""Where a stored image's bytes are for a thumbnail's render, whatever the storage.

The local folder has them on this machine: the stored file itself. A store elsewhere (a bucket)
lends a copy, fetched into the thumbnail cache's ``.sources`` folder only once a render is due
(a thumbnail another instance made is copied from the store instead, and the image is never
fetched) and removed once it is rendered. A storage that can do neither has no thumbnails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from clustr_aio.images.thumbnails import Source
from clustr_aio.storage.base import Downloading, OnDisk, Reading

__all__ = ["SOURCES", "render_source"]

SOURCES: Final = ".sources"
"""The copies' folder in the thumbnail cache (a dot-name: never a file key)."""


async def render_source(storage: object, name: str, cache_dir: Path) -> Source | None:
    """What to render the stored file ``name`` from; None when this storage cannot say."""
    if isinstance(storage, Downloading):  # a store elsewhere (asking it to locate would sign)
        return functools.partial(_downloaded, storage, name, cache_dir / SOURCES)
    if isinstance(storage, Reading):
        location = await storage.locate(name)
        if isinstance(location, OnDisk):
            return Path(location.path)
    return None


@contextlib.asynccontextmanager
async def _downloaded(storage: Downloading, name: str, folder: Path) -> AsyncIterator[Path]:
    copy = folder / uuid.uuid4().hex
    await storage.download(name, copy)
    try:
        yield copy
    finally:
        await asyncio.to_thread(copy.unlink, missing_ok=True)
