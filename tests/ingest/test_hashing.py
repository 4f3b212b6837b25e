"""sha256 while the bytes stream past (clustr_aio.ingest.hashing)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
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


async def test_a_stalled_block_is_let_go_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose bytes stop coming does not keep its unhashed chunks in memory: after
    IDLE_SECONDS they are hashed and dropped, and the digest is still right."""
    monkeypatch.setattr(hashing, "IDLE_SECONDS", 0.02)
    chunk = os.urandom(100_000)
    unheld = sys.getrefcount(chunk)
    hasher = StreamHasher()
    await hasher.update(chunk)
    assert sys.getrefcount(chunk) > unheld  # waiting for its block to fill
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sys.getrefcount(chunk) == unheld:
            break
    assert sys.getrefcount(chunk) == unheld, "the stalled chunk is still held"
    await hasher.update(b"more")
    assert await hasher.hexdigest() == hashlib.sha256(chunk + b"more").hexdigest()


async def test_hashers_together_hold_at_most_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd of uploads: past BUDGET_BYTES held by all hashers, chunks are hashed at once;
    an abandoned hasher's bytes stop counting, and every digest is still right."""
    monkeypatch.setattr(hashing, "BUDGET_BYTES", 256 * 1024)
    hashers = [StreamHasher() for _ in range(20)]
    sent = [b""] * 20
    peak = 0
    for n, hasher in enumerate(hashers):
        for _ in range(4):
            chunk = os.urandom(32 * 1024)
            sent[n] += chunk
            await hasher.update(chunk)
            peak = max(peak, StreamHasher.held)
    assert peak <= 256 * 1024
    for n, hasher in enumerate(hashers[:10]):
        assert await hasher.hexdigest() == hashlib.sha256(sent[n]).hexdigest()
    for hasher in hashers:
        hasher.release()
    assert StreamHasher.held == 0
