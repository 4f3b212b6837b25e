"""sha256 while the bytes stream past, on the hashing thread (clustr_aio.ingest.hashing)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from clustr_aio.ingest import hashing
from clustr_aio.ingest.hashing import BATCH_BYTES, StreamHasher, all_hashed, unhashed_bytes
from clustr_aio.storage.base import Buffer

KIB = 1024


class Watched:
    """A sha256 that records which threads hashed into it, and may hold them up (``gate``)
    or fail."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.real = hashlib.sha256()
        self.threads: list[str] = []
        self.gate = gate
        self.fail = fail

    def update(self, data: Buffer) -> None:
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail:
            raise OSError("the piece could not be read")
        self.real.update(data)

    def hexdigest(self) -> str:
        return self.real.hexdigest()


def watched(hasher: StreamHasher, **kwargs: Any) -> Watched:
    digest = Watched(**kwargs)
    hasher.digest = digest  # type: ignore[assignment]
    return digest


def done_at_once(step: Coroutine[Any, Any, None]) -> bool:
    """Whether the coroutine ran to its end without waiting for anything."""
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()
    return False


@pytest.mark.parametrize("chunk", [1, 1000, 64 * KIB, BATCH_BYTES - 1, BATCH_BYTES + 1])
@pytest.mark.parametrize("size", [0, 5, 64 * KIB + 1, 3 * BATCH_BYTES + 17])
@pytest.mark.parametrize("ask", ["hexdigest", "finish"])
async def test_the_digest_is_hashlibs_however_the_bytes_are_cut(
    chunk: int, size: int, ask: str
) -> None:
    if chunk == 1 and size > BATCH_BYTES:
        size = 64 * KIB + 1  # a million awaits would take seconds and tell nothing more
    data = os.urandom(size)
    hasher = StreamHasher()
    for at in range(0, size, chunk):
        await hasher.update(memoryview(data)[at : at + chunk])
    if ask == "hexdigest":
        assert await hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    else:
        hasher.finish()
        await all_hashed()
        assert hasher.result() == hashlib.sha256(data).hexdigest()


async def test_many_files_at_once_each_get_their_own_bytes_in_order() -> None:
    sent = [b""] * 8
    hashers = [StreamHasher() for _ in sent]
    for _ in range(6):
        for n, hasher in enumerate(hashers):
            chunk = os.urandom(100 * KIB + 4096 * n)
            sent[n] += chunk
            await hasher.update(chunk)
    for hasher in hashers:
        hasher.finish()
    await all_hashed()
    assert [h.result() for h in hashers] == [hashlib.sha256(s).hexdigest() for s in sent]


async def test_chunks_are_hashed_off_the_loop_a_megabyte_at_a_time_without_waiting() -> None:
    """update() adds a chunk to the open batch and returns without waiting for anything;
    the batch goes to the hashing thread once it holds BATCH_BYTES, whoever's chunks they
    are, and the rest when the digests are asked for."""
    hashers = [StreamHasher() for _ in range(3)]
    digests = [watched(h) for h in hashers]
    chunk = bytes(BATCH_BYTES // 4)
    for n in range(5):
        assert done_at_once(hashers[n % 3].update(chunk))
    for _ in range(100):
        if unhashed_bytes() == len(chunk):  # the first four sent at once, the fifth waits
            break
        await asyncio.sleep(0.01)
    assert unhashed_bytes() == len(chunk)
    assert [len(d.threads) for d in digests] == [2, 1, 1]
    for hasher in hashers:
        hasher.finish()
    await all_hashed()
    assert unhashed_bytes() == 0
    assert [d.threads for d in digests] == [["clustr-hash"] * 2] * 2 + [["clustr-hash"]]
    assert hashers[1].result() == hashlib.sha256(chunk * 2).hexdigest()


async def test_a_stalled_files_chunks_are_let_go_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose bytes stop coming does not keep its chunks in memory: after IDLE_SECONDS
    the open batch is hashed and dropped, and the digest is still right."""
    monkeypatch.setattr(hashing, "IDLE_SECONDS", 0.02)
    chunk = os.urandom(10_000)
    unheld = sys.getrefcount(chunk)
    hasher = StreamHasher()
    await hasher.update(chunk)
    assert sys.getrefcount(chunk) > unheld  # in the open batch
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sys.getrefcount(chunk) == unheld:
            break
    assert sys.getrefcount(chunk) == unheld, "the stalled chunk is still held"
    await hasher.update(b"more")
    assert await hasher.hexdigest() == hashlib.sha256(chunk + b"more").hexdigest()


async def test_hashers_together_hold_at_most_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd of uploads: past BUDGET_BYTES, the one given a chunk waits until the thread has
    hashed everything; every digest is still right."""
    monkeypatch.setattr(hashing, "BUDGET_BYTES", 256 * KIB)
    hashers = [StreamHasher() for _ in range(20)]
    sent = [b""] * 20
    peak = 0
    for n, hasher in enumerate(hashers):
        for _ in range(4):
            chunk = os.urandom(24 * KIB)
            sent[n] += chunk
            await hasher.update(chunk)
            peak = max(peak, unhashed_bytes())
    assert peak <= 256 * KIB
    for n, hasher in enumerate(hashers):
        assert await hasher.hexdigest() == hashlib.sha256(sent[n]).hexdigest()
    assert unhashed_bytes() == 0


async def test_a_thread_that_cannot_keep_up_holds_the_uploads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the hashing thread held up, what waits for it grows to BUDGET_BYTES and no
    further: the update that goes past it waits until the thread has caught up."""
    monkeypatch.setattr(hashing, "BUDGET_BYTES", BATCH_BYTES + 8 * 64 * KIB)
    gate = threading.Event()
    stuck = StreamHasher()
    watched(stuck, gate=gate)
    await stuck.update(bytes(BATCH_BYTES))  # a batch: the thread now waits on the gate
    hasher = StreamHasher()
    data = os.urandom(12 * 64 * KIB)
    waited = None
    for n in range(12):
        piece = data[n * 64 * KIB : (n + 1) * 64 * KIB]
        update = asyncio.ensure_future(hasher.update(piece))
        await asyncio.sleep(0.01)
        if not update.done():
            waited = n
            assert unhashed_bytes() <= BATCH_BYTES + 9 * 64 * KIB
            gate.set()
        await update
    assert waited == 8, "the update past the budget did not wait for the thread"
    assert await hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await stuck.hexdigest() == hashlib.sha256(bytes(BATCH_BYTES)).hexdigest()


async def test_an_abandoned_files_chunks_are_not_hashed() -> None:
    hasher = StreamHasher()
    digest = watched(hasher)
    await hasher.update(bytes(1000))
    hasher.release()
    await all_hashed()
    assert digest.threads == []
    assert unhashed_bytes() == 0


async def test_a_chunk_the_thread_could_not_hash_fails_the_digest() -> None:
    hasher = StreamHasher()
    digest = watched(hasher, fail=True)
    await hasher.update(bytes(64 * KIB))
    await hasher.update(bytes(64 * KIB))  # not tried: the digest failed already
    with pytest.raises(OSError, match="could not be read"):
        await hasher.hexdigest()
    assert len(digest.threads) == 1
