"""A folder's entries, a chunk at a time, each chunk read on a thread.

The start-up reconciliation and the thumbnails' prune walk folders of a million entries; a
list of them all held 90-200 MB (a ``DirEntry`` or a name each) at every start. A chunk holds
only its own names, and the loop is free between chunks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

__all__ = ["names_in_chunks"]


async def names_in_chunks(
    folder: Path, size: int, keep: Callable[[os.DirEntry[str]], bool]
) -> AsyncIterator[list[str]]:
    """The names of ``folder``'s entries that ``keep`` keeps, up to ``size`` at a time (in
    directory order); nothing when the folder does not exist."""
    try:
        entries = await asyncio.to_thread(os.scandir, folder)
    except FileNotFoundError:
        return
    try:
        while chunk := await asyncio.to_thread(_next_chunk, entries, size, keep):
            yield chunk
    finally:
        entries.close()


def _next_chunk(
    entries: Iterator[os.DirEntry[str]], size: int, keep: Callable[[os.DirEntry[str]], bool]
) -> list[str]:
    chunk: list[str] = []
    for entry in entries:
        if keep(entry):
            chunk.append(entry.name)
            if len(chunk) == size:
                break
    return chunk
