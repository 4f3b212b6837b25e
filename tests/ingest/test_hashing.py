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
from clustr_aio.ingest.hashing import HAND_BYTES, StreamHasher, all_hashed, unhashed_bytes
from clustr_aio.storage.base import Buffer


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


@pytest.mark.parametrize("chunk", [1, 1000, HAND_BYTES - 1, HAND_BYTES, (1 << 20) + 1])
@pytest.mark.parametrize("size", [0, 5, HAND_BYTES - 1, 2 * HAND_BYTES + 1, 3 * (1 << 20) + 17])
@pytest.mark.parametrize("ask", ["hexdigest", "finish"])
async def test_the_digest_is_hashlibs_however_the_bytes_are_cut(
    chunk: int, size: int, ask: str
) -> None:
    if chunk == 1 and size > HAND_BYTES * 2:
        size = HAND_BYTES * 2 + 1  # a million awaits would take seconds and tell nothing more
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
            chunk = os.urandom(HAND_BYTES // 2 + 4096 * n)
            sent[n] += chunk
            await hasher.update(chunk)
    for hasher in hashers:
        hasher.finish()
    await all_hashed()
    assert [h.result() for h in hashers] == [hashlib.sha256(s).hexdigest() for s in sent]


async def test_chunks_are_hashed_off_the_loop_as_they_come_without_waiting() -> None:
    """A chunk of HAND_BYTES is handed to the hashing thread by update(), which returns
    without waiting for anything; smaller ones are gathered to that much first."""
    hasher = StreamHasher()
    digest = watched(hasher)
    for _ in range(4):
        assert done_at_once(hasher.update(bytes(HAND_BYTES)))
    assert done_at_once(hasher.update(bytes(HAND_BYTES // 2)))
    assert StreamHasher.gathered == HAND_BYTES // 2
    assert done_at_once(hasher.update(bytes(HAND_BYTES // 2)))
    assert StreamHasher.gathered == 0
    await all_hashed()
    assert digest.threads == ["clustr-hash"] * 6
    assert hasher.result() == hashlib.sha256(bytes(5 * HAND_BYTES)).hexdigest()


async def test_a_small_rest_is_hashed_on_the_loop_when_the_thread_holds_none_of_it() -> None:
    hasher = StreamHasher()
    digest = watched(hasher)
    await hasher.update(bytes(HAND_BYTES))
    await all_hashed()
    await hasher.update(b"tail")
    assert await hasher.hexdigest() == hashlib.sha256(bytes(HAND_BYTES) + b"tail").hexdigest()
    assert digest.threads == ["clustr-hash", threading.current_thread().name]


async def test_a_stalled_files_gathered_chunks_are_let_go_of(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file whose bytes stop coming does not keep its gathered chunks in memory: after
    IDLE_SECONDS they are hashed and dropped, and the digest is still right."""
    monkeypatch.setattr(hashing, "IDLE_SECONDS", 0.02)
    chunk = os.urandom(10_000)
    unheld = sys.getrefcount(chunk)
    hasher = StreamHasher()
    await hasher.update(chunk)
    assert sys.getrefcount(chunk) > unheld  # gathered
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sys.getrefcount(chunk) == unheld:
            break
    assert sys.getrefcount(chunk) == unheld, "the stalled chunk is still held"
    await hasher.update(b"more")
    assert await hasher.hexdigest() == hashlib.sha256(chunk + b"more").hexdigest()


async def test_hashers_together_hold_at_most_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd of uploads gathering small chunks: past BUDGET_BYTES, the one given a chunk
    hashes what it holds at once; an abandoned hasher's bytes stop counting, and every digest
    is still right."""
    monkeypatch.setattr(hashing, "BUDGET_BYTES", 256 * 1024)
    hashers = [StreamHasher() for _ in range(20)]
    sent = [b""] * 20
    peak = 0
    for n, hasher in enumerate(hashers):
        for _ in range(4):
            chunk = os.urandom(24 * 1024)
            sent[n] += chunk
            await hasher.update(chunk)
            peak = max(peak, unhashed_bytes())
    assert peak <= 256 * 1024
    for n, hasher in enumerate(hashers[:10]):
        assert await hasher.hexdigest() == hashlib.sha256(sent[n]).hexdigest()
    for hasher in hashers:
        hasher.release()
    await all_hashed()
    assert unhashed_bytes() == 0


async def test_a_thread_that_cannot_keep_up_holds_the_uploads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the hashing thread held up, what waits for it grows to BUDGET_BYTES and no
    further: the update that goes past it waits until the thread has caught up."""
    monkeypatch.setattr(hashing, "BUDGET_BYTES", 8 * HAND_BYTES)
    gate = threading.Event()
    stuck = StreamHasher()
    watched(stuck, gate=gate)
    await stuck.update(bytes(HAND_BYTES))  # the thread now waits on the gate
    hasher = StreamHasher()
    data = os.urandom(12 * HAND_BYTES)
    waited = None
    for n in range(12):
        update = asyncio.ensure_future(hasher.update(data[n * HAND_BYTES : (n + 1) * HAND_BYTES]))
        await asyncio.sleep(0.01)
        if not update.done():
            waited = n
            assert unhashed_bytes() <= 8 * HAND_BYTES + HAND_BYTES
            gate.set()
        await update
    assert waited == 7, "the update past the budget did not wait for the thread"
    assert await hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await stuck.hexdigest() == hashlib.sha256(bytes(HAND_BYTES)).hexdigest()


async def test_a_piece_the_thread_could_not_hash_fails_the_digest() -> None:
    hasher = StreamHasher()
    watched(hasher, fail=True)
    await hasher.update(bytes(HAND_BYTES))
    with pytest.raises(OSError, match="could not be read"):
        await hasher.hexdigest()
