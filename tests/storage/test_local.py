"""The upload folder (clustr_aio.storage.local): publish without overwriting, discard without
leftovers, sweep what dead processes left, and a full disk."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from clustr_aio.domain.errors import InsufficientStorage
from clustr_aio.storage import local
from clustr_aio.storage.base import BatchScope, Buffer, OnDisk
from clustr_aio.storage.local import (
    INCOMING_DIR,
    LocalBatch,
    LocalStorage,
    sweep_stale_incoming,
    write_all,
)
from tests.conftest import JPEG, PNG, assert_nothing_stored, stored_files, temp_files
from tests.http.helpers import eventually

BLOCK = 1024
"""A small write block: a few KiB already take several thread-pool writes."""


@pytest.fixture
async def storage(upload_dir: Path) -> AsyncIterator[LocalStorage]:
    storage = LocalStorage(upload_dir, write_block=BLOCK)
    await storage.open()
    yield storage
    await storage.close()


async def store(batch: LocalBatch, name: str, data: bytes, piece: int = 300) -> None:
    writer = batch.add_file(name)
    for at in range(0, len(data), piece):
        await writer.write(data[at : at + piece])
    await writer.close()


async def store_and_publish(batch: LocalBatch, name: str, data: bytes) -> list[str]:
    await store(batch, name, data)
    return await batch.publish()


async def publish_and_seal(batch: LocalBatch) -> list[str]:
    names = await batch.publish()
    await batch.seal()
    return names


def own_dirs(folder: Path) -> list[Path]:
    incoming = folder / INCOMING_DIR
    return sorted(incoming.iterdir()) if incoming.exists() else []


# --------------------------------------------------------------------------- lifecycle


async def test_open_makes_a_locked_directory_and_close_removes_it(upload_dir: Path) -> None:
    storage = LocalStorage(upload_dir)
    await storage.open()
    [own] = own_dirs(upload_dir)
    assert (own / ".lock").is_file()
    assert held_by_someone(own / ".lock")
    await storage.close()
    assert own_dirs(upload_dir) == []
    await storage.close()  # twice is fine


# --------------------------------------------------------------------------- publish


async def test_publish_makes_files_visible_in_order(
    storage: LocalStorage, upload_dir: Path
) -> None:
    batch = storage.batch()
    contents = {"b.png": PNG * 5, "a.jpg": JPEG, "c.jpg": b"\xff\xd8\xff" + bytes(5 * BLOCK + 7)}
    for name, data in contents.items():
        await store(batch, name, data)
    assert stored_files(upload_dir) == []  # nothing visible before publish
    assert await batch.publish() == ["b.png", "a.jpg", "c.jpg"]
    for name, data in contents.items():
        assert (upload_dir / name).read_bytes() == data
    assert len(temp_files(upload_dir)) == 4  # three second names and the journal, till the seal
    await batch.seal()
    assert temp_files(upload_dir) == []


async def test_publish_never_overwrites_and_numbers_taken_names(
    storage: LocalStorage, upload_dir: Path
) -> None:
    (upload_dir / "photo.jpg").write_bytes(b"old")
    (upload_dir / "photo-2.jpg").write_bytes(b"old 2")
    batch = storage.batch()
    for i in range(3):
        await store(batch, "photo.jpg", JPEG + bytes([i]))
    assert await batch.publish() == ["photo-1.jpg", "photo-3.jpg", "photo-4.jpg"]
    assert (upload_dir / "photo.jpg").read_bytes() == b"old"
    assert (upload_dir / "photo-2.jpg").read_bytes() == b"old 2"
    assert (upload_dir / "photo-4.jpg").read_bytes() == JPEG + b"\x02"


async def test_two_processes_publishing_the_same_names_never_collide(upload_dir: Path) -> None:
    first, second = LocalStorage(upload_dir), LocalStorage(upload_dir)
    await first.open()
    await second.open()
    try:
        batches: list[LocalBatch] = []
        for storage, tag in ((first, 1), (second, 2)) * 5:
            batch = storage.batch()
            await store(batch, "same.jpg", JPEG + bytes([tag]) * 2000 + bytes([len(batches)]))
            batches.append(batch)
        results = await asyncio.gather(*(batch.publish() for batch in batches))
    finally:
        await first.close()
        await second.close()
    names = [name for result in results for name in result]
    assert sorted(names) == sorted(["same.jpg"] + [f"same-{n}.jpg" for n in range(1, 10)])
    for i, name in enumerate(names):
        assert (upload_dir / name).read_bytes()[-1] == i


async def test_publishes_of_one_name_at_once_take_distinct_numbers_without_colliding(
    storage: LocalStorage, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixteen uploads of one name published at the same time, on the pool's threads: each
    tries a number of its own, so no link fails on another's name (each failure a system
    call and an exception)."""
    collisions: list[str] = []
    real_link = os.link

    def slow_link(source: str, target: str) -> None:
        time.sleep(0.01)  # the others take their numbers meanwhile
        try:
            real_link(source, target)
        except FileExistsError:
            collisions.append(target)
            raise

    monkeypatch.setattr(os, "link", slow_link)
    batches: list[LocalBatch] = []
    for i in range(16):
        batch = storage.batch()
        await store(batch, "same.jpg", JPEG + bytes([i]) * 3)
        batches.append(batch)
    results = await asyncio.gather(*(batch.publish() for batch in batches))
    names = [name for result in results for name in result]
    assert sorted(names) == sorted(["same.jpg"] + [f"same-{n}.jpg" for n in range(1, 16)])
    for i, name in enumerate(names):
        assert (upload_dir / name).read_bytes() == JPEG + bytes([i]) * 3
    assert collisions == []


async def test_failed_publish_takes_back_what_it_linked(
    storage: LocalStorage, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = storage.batch()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        await store(batch, name, JPEG)
    real_link = storage.link_unique

    def failing_on_the_second(source: Path, desired: str) -> str:
        if desired == "b.jpg":
            raise OSError(errno.EIO, "Input/output error")
        return real_link(source, desired)

    monkeypatch.setattr(storage, "link_unique", failing_on_the_second)
    with pytest.raises(OSError, match="Input/output"):
        await batch.publish()
    assert stored_files(upload_dir) == []
    assert not list((upload_dir / INCOMING_DIR).glob("*/*.journal"))  # gone after the links
    await batch.discard()
    assert_nothing_stored(upload_dir)


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_flushes_files_and_the_folder(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    flushed: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    storage = LocalStorage(upload_dir, fsync=fsync, write_block=BLOCK)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "a.jpg", JPEG)
        await store(batch, "b.png", PNG)
        await publish_and_seal(batch)
    finally:
        await storage.close()
    # Two files; the journal's directory entry; the folder; the seal (the journal renamed); the
    # temporary files' removal, before the seal's marker goes.
    assert len(flushed) == (6 if fsync else 0)


# --------------------------------------------------------------------------- discard


async def test_discard_removes_everything_after_partial_writes(
    storage: LocalStorage, upload_dir: Path
) -> None:
    batch = storage.batch()
    await store(batch, "done.jpg", JPEG * 10)
    writer = batch.add_file("half.jpg")
    for _ in range(10):  # several blocks handed to the pool, the file never closed
        await writer.write(bytes(BLOCK))
    await asyncio.sleep(0)
    assert temp_files(upload_dir)  # there was something to remove
    await batch.discard()
    assert_nothing_stored(upload_dir)
    [own] = own_dirs(upload_dir)
    assert sorted(p.name for p in own.iterdir()) == [".lock"]
    await batch.discard()  # again: harmless


async def test_discard_after_publish_takes_the_files_out_at_once_and_frees_them_later(
    storage: LocalStorage, upload_dir: Path
) -> None:
    """A commit that failed: the published files leave the folder before discard() returns
    (renamed into the process's directory, never served); their inodes are freed on a pool
    thread afterwards, and nothing is left."""
    batch = storage.batch()
    for n in range(50):
        await store(batch, f"p{n}.jpg", JPEG)
    await batch.publish()
    assert len(stored_files(upload_dir)) == 50
    await batch.discard()
    assert stored_files(upload_dir) == []
    [own] = own_dirs(upload_dir)
    await eventually(lambda: sorted(p.name for p in own.iterdir()) == [".lock"])
    assert temp_files(upload_dir) == []


async def test_discard_of_an_empty_batch(storage: LocalStorage, upload_dir: Path) -> None:
    batch = storage.batch()
    await batch.discard()
    batch.add_file("never-written.jpg")
    await batch.discard()
    assert_nothing_stored(upload_dir)


async def test_a_vanished_upload_folder_is_not_recreated(
    storage: LocalStorage, upload_dir: Path
) -> None:
    """An unmounted upload volume must fail uploads, not fill the disk underneath it."""
    shutil.rmtree(upload_dir)
    batch = storage.batch()
    with pytest.raises(FileNotFoundError):  # from the second block's write, waiting on the first
        await store(batch, "a.jpg", JPEG + bytes(2 * BLOCK))
    await batch.discard()
    assert not await asyncio.to_thread(upload_dir.exists)


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
@pytest.mark.parametrize("size", [100, 3 * BLOCK], ids=["small", "blocks"])
async def test_a_removed_incoming_folder_is_made_again_for_the_next_batch(
    upload_dir: Path, fsync: bool, size: int
) -> None:
    """An operator's ``rm -r .incoming`` under a running server: the next upload makes the
    process's directory again, with a held lock (a starting worker's sweep spares it), instead
    of every upload failing until a restart."""
    storage = LocalStorage(upload_dir, write_block=BLOCK, fsync=fsync)
    await storage.open()
    try:
        [own] = own_dirs(upload_dir)
        shutil.rmtree(upload_dir / INCOMING_DIR)
        data = JPEG + bytes(size)
        assert await publish_and_seal_one(storage, "a.jpg", data) == ["a.jpg"]
        assert (upload_dir / "a.jpg").read_bytes() == data
        assert own_dirs(upload_dir) == [own]
        assert held_by_someone(own / ".lock")
        assert sweep_stale_incoming(upload_dir) == []
        await storage.check_writable()
    finally:
        await storage.close()
    assert own_dirs(upload_dir) == []


async def publish_and_seal_one(storage: LocalStorage, name: str, data: bytes) -> list[str]:
    batch = storage.batch()
    await store(batch, name, data)
    return await publish_and_seal(batch)


async def test_a_publish_cancelled_midway_is_taken_back(
    storage: LocalStorage, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain's timeout (or handler cancellation) can strike while the pool thread is
    linking: the client is told the upload failed, so nothing of it may stay published."""
    linking, release = threading.Event(), threading.Event()
    link_unique = storage.link_unique

    def slow_link(source: Path, desired: str) -> str:
        linking.set()
        release.wait(10)
        return link_unique(source, desired)

    monkeypatch.setattr(storage, "link_unique", slow_link)

    async def upload() -> None:
        async with BatchScope(storage.batch()) as batch:
            for name in ("a.jpg", "b.jpg"):
                writer = batch.add_file(name)
                await writer.write(JPEG)
                await writer.close()
            await batch.publish()

    task = asyncio.create_task(upload())
    assert await asyncio.to_thread(linking.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_stored(upload_dir)


# --------------------------------------------------------------------------- full disk


async def test_enospc_is_insufficient_storage_and_leaves_nothing(
    storage: LocalStorage, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, buffers: Sequence[Buffer], /) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    batch = storage.batch()
    with pytest.raises(InsufficientStorage) as caught:
        await store_and_publish(batch, "a.jpg", JPEG * 20)
    assert caught.value.status == 507
    await batch.discard()
    assert_nothing_stored(upload_dir)


def test_write_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def stingy(fd: int, buffers: Sequence[Buffer], /) -> int:
        return real_writev(fd, [memoryview(buffers[0])[:3]])  # at most 3 bytes a call

    monkeypatch.setattr(os, "writev", stingy)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, [b"hello ", b"", memoryview(b"wide world"), b"!"])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hello wide world!"


# --------------------------------------------------------------------------- sweeping


def held_by_someone(lock: Path) -> bool:
    """Whether another open file description holds the flock (this process's too: flock locks
    belong to the open file, not to the process)."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def live_process_dir(upload_dir: Path) -> Iterator[Path]:
    """The .incoming directory of another, running process: it holds the flock on its .lock."""
    directory = upload_dir / INCOMING_DIR / "live-process"
    directory.mkdir(parents=True)
    (directory / "batch").mkdir()
    (directory / "batch" / "0").write_bytes(b"being received")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(directory / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield directory
    finally:
        holder.stdin.close()  # the holder exits, and its lock goes with it
        holder.wait(30)


def dead_process_dir(upload_dir: Path, name: str, *, lock: bool, age: float = 0) -> Path:
    directory = upload_dir / INCOMING_DIR / name
    (directory / "batch").mkdir(parents=True)
    (directory / "batch" / "0").write_bytes(b"half a file")
    if lock:
        (directory / ".lock").touch()
    if age:
        then = time.time() - age
        os.utime(directory, (then, then))
    return directory


async def test_open_sweeps_dead_processes_and_spares_live_ones(
    upload_dir: Path, live_process_dir: Path
) -> None:
    dead = dead_process_dir(upload_dir, "dead-process", lock=True)
    old_lockless = dead_process_dir(upload_dir, "crashed-before-locking", lock=False, age=3600)
    young_lockless = dead_process_dir(upload_dir, "starting-up", lock=False)
    (upload_dir / "published.jpg").write_bytes(JPEG)

    storage = LocalStorage(upload_dir)
    await storage.open()
    try:
        assert not dead.exists()
        assert not old_lockless.exists()
        assert young_lockless.exists()  # may be a process between its mkdir and its flock
        assert (live_process_dir / "batch" / "0").read_bytes() == b"being received"
        assert held_by_someone(live_process_dir / ".lock")
        assert (upload_dir / "published.jpg").read_bytes() == JPEG
    finally:
        await storage.close()
    # Closing removes only the storage's own directory.
    assert (live_process_dir / "batch" / "0").read_bytes() == b"being received"


async def test_a_sweep_at_the_worst_moment_spares_a_starting_process(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers start together, each sweeping: another one's sweep may run just before this
    one takes its flock. Its directory must survive that, or its uploads lose their files."""
    real_flock = fcntl.flock
    swept: list[list[Path]] = []

    def flock_right_after_someone_sweeps(fd: int, operation: int) -> None:
        if not swept:
            swept.append([])  # first, so that the sweep's own flock calls go straight through
            swept[0] = sweep_stale_incoming(upload_dir)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_right_after_someone_sweeps)
    storage = LocalStorage(upload_dir)
    await storage.open()
    try:
        assert swept == [[]]
        [own] = own_dirs(upload_dir)
        assert held_by_someone(own / ".lock")
        await store_and_publish(storage.batch(), "a.jpg", JPEG)
        assert stored_files(upload_dir) == ["a.jpg"]
    finally:
        await storage.close()


def test_workers_sweeping_at_once_each_dead_folder_goes_once_and_none_fails(
    upload_dir: Path,
) -> None:
    """WORKERS=N start together and each sweeps: a folder another one removed meanwhile (its
    lock gone before this one opens it, or unlinked while this one waited for it) is skipped,
    not an exception that stops the worker from starting."""
    for round_ in range(5):
        locked = [dead_process_dir(upload_dir, f"d{round_}-{i}", lock=True) for i in range(60)]
        for i in range(60):
            dead_process_dir(upload_dir, f"o{round_}-{i}", lock=False, age=3600)
        results: list[list[Path]] = []
        errors: list[BaseException] = []

        def sweep(
            results: list[list[Path]] = results, errors: list[BaseException] = errors
        ) -> None:
            try:
                results.append(sweep_stale_incoming(upload_dir))
            except BaseException as error:  # the test's finding
                errors.append(error)

        sweepers = [threading.Thread(target=sweep) for _ in range(4)]
        for thread in sweepers:
            thread.start()
        for thread in sweepers:
            thread.join()
        assert errors == []
        assert list((upload_dir / INCOMING_DIR).iterdir()) == []
        removed_locked = [path for swept in results for path in swept if path in set(locked)]
        assert sorted(removed_locked) == sorted(locked)  # each once: no duplicates


async def test_the_local_storage_locates_only_plain_names(upload_dir: Path) -> None:
    storage = LocalStorage(upload_dir)
    assert await storage.locate("a.jpg") == OnDisk(str(upload_dir / "a.jpg"))
    for name in ("", ".incoming", "a/b.jpg", "../a.jpg", "a\0.jpg"):
        assert await storage.locate(name) is None, name


# --------------------------------------------------------------------------- memory


async def test_a_stalled_file_is_written_out_after_idle_flush(upload_dir: Path) -> None:
    """An upload that stops sending does not keep what it sent in memory: after idle_flush,
    a block that is not full goes to disk as it is."""
    storage = LocalStorage(upload_dir, write_block=1024 * 1024, idle_flush=0.05)
    await storage.open()
    try:
        batch = storage.batch()
        writer = batch.add_file("stalled.jpg")
        await writer.write(JPEG * 10)  # far less than a block
        assert temp_files(upload_dir) == []  # not written yet: nothing on disk
        await asyncio.sleep(0.3)
        [path] = temp_files(upload_dir)
        assert path.stat().st_size == len(JPEG) * 10
        await writer.write(PNG)
        await writer.close()
        assert await batch.publish() == ["stalled.jpg"]
        assert (upload_dir / "stalled.jpg").read_bytes() == JPEG * 10 + PNG
    finally:
        await storage.close()


async def test_bytes_waiting_for_the_disk_stay_under_the_memory_budget(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def slow_writev(fd: int, buffers: Sequence[Buffer], /) -> int:
        time.sleep(0.01)  # a slow disk: the bytes come faster than they go
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", slow_writev)
    piece = 16 * 1024
    storage = LocalStorage(upload_dir, write_block=1024 * 1024, memory_budget=4 * piece)
    await storage.open()
    try:
        batch = storage.batch()
        writers = [batch.add_file(f"{n}.jpg") for n in range(3)]
        held = []
        for _ in range(20):
            for writer in writers:
                await writer.write(JPEG + bytes(piece - len(JPEG)))
                held.append(storage._held)
        for writer in writers:
            await writer.close()
        assert len(await batch.publish()) == 3
    finally:
        await storage.close()
    assert max(held) <= 5 * piece  # the budget, and the one piece that crossed it
    assert storage._held == 0


# --------------------------------------------------------------------------- one thread hop


async def test_a_small_last_file_is_written_by_the_publish_itself(upload_dir: Path) -> None:
    """A closed file smaller than a block waits for the publish, which creates, writes and
    closes it in its own thread hop: until then nothing of it is on disk."""
    storage = LocalStorage(upload_dir, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "small.jpg", JPEG * 10)
        assert temp_files(upload_dir) == []  # deferred: no pool round trip of its own
        assert await publish_and_seal(batch) == ["small.jpg"]
        assert (upload_dir / "small.jpg").read_bytes() == JPEG * 10
        assert temp_files(upload_dir) == []
        assert storage._held == 0
    finally:
        await storage.close()


async def test_only_the_last_file_waits_for_the_publish(upload_dir: Path) -> None:
    """A deferred file is handed to the pool as soon as another file starts (memory stays one
    file's), and one whose publish does not come is written after idle_flush anyway."""
    storage = LocalStorage(upload_dir, write_block=1024 * 1024, idle_flush=0.05)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "first.jpg", JPEG)
        await store(batch, "second.png", PNG)
        await asyncio.sleep(0.01)
        assert len(temp_files(upload_dir)) == 1  # the first one, on disk; the second waits
        await asyncio.sleep(0.3)
        assert len(temp_files(upload_dir)) == 2  # idle_flush: the second one too
        assert await batch.publish() == ["first.jpg", "second.png"]
        assert (upload_dir / "second.png").read_bytes() == PNG
        assert storage._held == 0
    finally:
        await storage.close()


async def test_without_fsync_the_loop_writes_a_small_file_as_the_next_one_starts(
    upload_dir: Path,
) -> None:
    """No thread hop for it: the file is whole on disk before add_file returns (the pool could
    not have run while this test held the loop), and its bytes are released at once."""
    storage = LocalStorage(upload_dir, fsync=False, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "first.jpg", JPEG * 10)
        assert storage._held == len(JPEG) * 10
        second = batch.add_file("second.png")
        [written] = temp_files(upload_dir)
        assert written.read_bytes() == JPEG * 10
        assert storage._held == 0
        await second.write(PNG)
        await second.close()
        assert await publish_and_seal(batch) == ["first.jpg", "second.png"]
        assert (upload_dir / "first.jpg").read_bytes() == JPEG * 10
        assert (upload_dir / "second.png").read_bytes() == PNG
    finally:
        await storage.close()


def _full_disk(fd: int, buffers: Sequence[Buffer], /) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_without_fsync_a_small_file_the_loop_fails_to_write_publishes_nothing(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's write fails as the next file starts; the publish raises it, as it would a
    pool write's failure, and nothing is left."""
    storage = LocalStorage(upload_dir, fsync=False, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        async with BatchScope(storage.batch()) as batch:
            await store(batch, "small.jpg", JPEG)  # type: ignore[arg-type]
            monkeypatch.setattr(os, "writev", _full_disk)
            await store(batch, "next.png", PNG)  # type: ignore[arg-type]
            monkeypatch.undo()
            with pytest.raises(InsufficientStorage):
                await batch.publish()
        assert_nothing_stored(upload_dir)
        assert storage._held == 0
    finally:
        await storage.close()


async def test_a_discarded_deferred_file_leaves_nothing(upload_dir: Path) -> None:
    storage = LocalStorage(upload_dir, write_block=1024 * 1024, idle_flush=0.05)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "gone.jpg", JPEG)
        await batch.discard()
        await asyncio.sleep(0.2)  # past idle_flush: its timer must not write it after all
        assert_nothing_stored(upload_dir)
        assert storage._held == 0
    finally:
        await storage.close()


@pytest.fixture
def linked_on(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The thread of each ``os.link`` the test's storage makes (a publish's links)."""
    threads: list[threading.Thread] = []
    link = os.link

    def noting_link(source: str, target: str) -> None:
        threads.append(threading.current_thread())
        link(source, target)

    monkeypatch.setattr(os, "link", noting_link)
    return threads


async def test_without_fsync_a_one_small_file_batch_is_published_on_the_loop(
    upload_dir: Path, linked_on: list[threading.Thread]
) -> None:
    """FSYNC=false: the batch's one deferred file is created, written and linked by the loop's
    own thread, no pool round trip at all (issue 16's C0); with two files, on the pool."""
    storage = LocalStorage(upload_dir, fsync=False, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        batch = storage.batch()
        await store(batch, "small.jpg", JPEG * 10)
        assert temp_files(upload_dir) == []  # deferred until the publish
        assert await publish_and_seal(batch) == ["small.jpg"]
        assert linked_on == [threading.main_thread()]
        assert (upload_dir / "small.jpg").read_bytes() == JPEG * 10
        assert temp_files(upload_dir) == []
        assert storage._held == 0
        linked_on.clear()
        batch = storage.batch()
        await store(batch, "one.jpg", JPEG)
        await store(batch, "two.png", PNG)
        assert await publish_and_seal(batch) == ["one.jpg", "two.png"]
        assert len(linked_on) == 2
        assert threading.main_thread() not in linked_on
    finally:
        await storage.close()


async def test_without_fsync_slow_writes_on_the_loop_send_the_next_ones_to_the_pool(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, linked_on: list[threading.Thread]
) -> None:
    """A write the kernel throttles (dirty pages ahead of the disk) would stall every
    connection on the loop: after three slow loop writes in a row (one is the scheduler's
    doing on a busy machine), small files go to the pool for a while, then back to the loop."""
    monkeypatch.setattr(local, "_LOOP_WRITES_PAUSE", 0.3)
    writev = os.writev

    def throttled_writev(fd: int, buffers: Sequence[Buffer], /) -> int:
        time.sleep(0.02)  # as balance_dirty_pages would
        return writev(fd, buffers)

    storage = LocalStorage(upload_dir, fsync=False, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    main = threading.main_thread()

    async def publish(name: str, *, slow: bool) -> threading.Thread:
        """Publish a one-small-file batch; the thread that linked it."""
        monkeypatch.setattr(os, "writev", throttled_writev if slow else writev)
        linked_on.clear()
        assert await publish_and_seal_one(storage, name, JPEG) == [name]
        [thread] = linked_on
        return thread

    try:
        # Two slow, then a fast one: not in a row, still on the loop.
        assert [await publish(f"a{n}.jpg", slow=n < 2) for n in range(3)] == [main] * 3
        # Three slow in a row: the next files go to the pool, slow or not.
        assert [await publish(f"b{n}.jpg", slow=True) for n in range(3)] == [main] * 3
        for n in range(2):
            assert await publish(f"c{n}.jpg", slow=n == 0) is not main
        await asyncio.sleep(0.3)  # the pause is over
        assert await publish("d.jpg", slow=False) is main
        assert len(stored_files(upload_dir)) == 9
    finally:
        await storage.close()


async def test_without_fsync_an_adopted_file_is_still_published_on_the_pool(
    upload_dir: Path, linked_on: list[threading.Thread]
) -> None:
    """An adopted file's last write copies the adopted bytes in (a tus upload's, of any size):
    not on the loop, even when its batch is that one file."""
    source = upload_dir / "data.bin"
    source.write_bytes(JPEG * 10)
    storage = LocalStorage(upload_dir, fsync=False, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        batch = storage.batch()
        writer = batch.add_file("adopted.jpg")
        writer.adopt(os.fspath(source), len(JPEG) * 10)
        await writer.close()
        assert await publish_and_seal(batch) == ["adopted.jpg"]
        assert linked_on
        assert threading.main_thread() not in linked_on
        assert (upload_dir / "adopted.jpg").read_bytes() == JPEG * 10
    finally:
        await storage.close()


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
async def test_a_deferred_write_that_fails_publishes_nothing(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    storage = LocalStorage(upload_dir, fsync=fsync, write_block=1024 * 1024, idle_flush=30)
    await storage.open()
    try:
        async with BatchScope(storage.batch()) as batch:
            await store(batch, "small.jpg", JPEG)  # type: ignore[arg-type]
            monkeypatch.setattr(os, "writev", _full_disk)
            with pytest.raises(InsufficientStorage):
                await batch.publish()
        monkeypatch.undo()
        assert_nothing_stored(upload_dir)
        assert storage._held == 0
    finally:
        await storage.close()


async def test_a_one_file_batch_has_no_journal_and_is_sealed_by_its_temporary_files_removal(
    upload_dir: Path,
) -> None:
    storage = LocalStorage(upload_dir)
    await storage.open()
    seen: list[tuple[str, list[Path], int]] = []
    storage.pause = lambda point: seen.append(
        (
            point,
            sorted((upload_dir / INCOMING_DIR).rglob("*.journal")),
            len(temp_files(upload_dir)),
        )
    )
    try:
        (upload_dir / "taken.jpg").write_bytes(b"someone's")
        batch = storage.batch()
        await store(batch, "taken.jpg", JPEG)
        assert await batch.publish() == ["taken-1.jpg"]
        assert (upload_dir / "taken-1.jpg").stat().st_nlink == 2  # its temporary file too
        await batch.seal()
    finally:
        await storage.close()
    # No journal at any point; the temporary file is there until the seal removes it.
    assert seen == [("link 0", [], 1), ("linked", [], 1), ("seal", [], 1), ("sealed", [], 0)]
    assert (upload_dir / "taken.jpg").read_bytes() == b"someone's"
    assert (upload_dir / "taken-1.jpg").read_bytes() == JPEG
    assert (upload_dir / "taken-1.jpg").stat().st_nlink == 1
    assert temp_files(upload_dir) == []


# --------------------------------------------------------------------------- free space


async def test_a_recent_free_space_reading_answers_and_one_that_leaves_no_room_is_checked_again(
    upload_dir: Path,
) -> None:
    storage = LocalStorage(upload_dir, min_free_space=1)
    await storage.open()
    try:
        free = await storage.free_space()  # a fresh reading
        await storage.ensure_room(free // 2)  # answered from it
        with pytest.raises(InsufficientStorage):
            await storage.ensure_room(free * 2)  # it says no: the real figure says no too
    finally:
        await storage.close()


# --------------------------------------------------------------------------- leaving out


async def test_files_left_out_before_the_publish_are_not_published_and_go_in_the_background(
    storage: LocalStorage, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused files and duplicates of a batch that keeps the others: never linked, and left
    to the background: their temporary files are all still there once publish and seal have
    returned."""
    batch = storage.batch()
    for n in range(6):
        await store(batch, f"p{n}.jpg", JPEG + bytes([n]))
    handed: list[str | Path] = []
    real_remove_later = storage.remove_later
    monkeypatch.setattr(storage, "remove_later", handed.extend)
    await batch.leave_out([1, 3, 4])
    await batch.leave_out([3])  # twice: harmless
    assert await publish_and_seal(batch) == ["p0.jpg", "p2.jpg", "p5.jpg"]
    assert stored_files(upload_dir) == ["p0.jpg", "p2.jpg", "p5.jpg"]
    # The seal removed only the second names.
    assert temp_files(upload_dir) == sorted(Path(p) for p in handed)
    assert sorted(Path(p).name.rpartition(".")[2] for p in handed) == ["1", "3", "4"]
    real_remove_later(handed)
    await eventually(lambda: temp_files(upload_dir) == [])
    for n in (0, 2, 5):
        assert (upload_dir / f"p{n}.jpg").read_bytes() == JPEG + bytes([n])


async def test_files_left_out_after_the_publish_leave_the_folder_before_the_seal(
    storage: LocalStorage, upload_dir: Path
) -> None:
    """The DEDUPE race found at the commit: those files go at once, the others stay."""
    batch = storage.batch()
    for n in range(4):
        await store(batch, f"p{n}.jpg", JPEG + bytes([n]))
    assert await batch.publish() == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    await batch.leave_out([0, 2])
    assert stored_files(upload_dir) == ["p1.jpg", "p3.jpg"]
    await batch.seal()
    await eventually(lambda: temp_files(upload_dir) == [])
    assert stored_files(upload_dir) == ["p1.jpg", "p3.jpg"]
    [own] = own_dirs(upload_dir)
    await eventually(lambda: sorted(p.name for p in own.iterdir()) == [".lock"])


async def test_a_sealed_batch_is_final(storage: LocalStorage, upload_dir: Path) -> None:
    batch = storage.batch()
    await store(batch, "a.jpg", JPEG)
    await store(batch, "b.jpg", JPEG)
    await publish_and_seal(batch)
    await batch.discard()  # a late discard (the request failed after its commit) keeps them
    assert stored_files(upload_dir) == ["a.jpg", "b.jpg"]
