"""sha256 while the bytes stream past (clustr_aio.ingest.hashing)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from clustr_aio.ingest import hashing
from clustr_aio.ingest.hashing import BLOCK_BYTES, StreamHasher
from clustr_aio.storage.base import Buffer


@pytest.mark.parametrize("chunk", [1, 1000, 64 * 1024, BLOCK_BYTES + 1])
@pytest.mark.parametrize("size", [0, 5, 64 * 1024 - 1, 3 * BLOCK_BYTES + 17])
async def test_the_digest_is_hashlibs_however_the_bytes_are_cut(chunk: int, size: int) -> None:
    data = os.urandom(size)
    hasher = StreamHasher()
    for at in range(0, size, chunk):
        await hasher.update(memoryview(data)[at : at + chunk])
    assert await hasher.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_large_files_are_hashed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = hashing._update

    def update(digest: hashlib._Hash, blocks: list[Buffer]) -> None:
        threads.append(threading.current_thread().name)
        real(digest, blocks)

    monkeypatch.setattr(hashing, "_update", update)
    hasher = StreamHasher()
    for _ in range(4):
        await hasher.update(bytes(BLOCK_BYTES))
    await hasher.update(b"tail")  # a few bytes at the end: hashed on the loop
    await hasher.hexdigest()
    assert all(name.startswith("clustr-hash") for name in threads[:4])
    assert threads[-1] == threading.current_thread().name
