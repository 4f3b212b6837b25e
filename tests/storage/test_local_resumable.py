"""The local resumable store on a real folder: durable state, the lock across processes,
uncommitted bytes cut off, removal, orphans."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clustr_aio.domain.errors import NotFound, UploadLocked
from clustr_aio.storage.local import LocalStorage
from clustr_aio.storage.local_resumable import TUS_DIR, LocalResumableStore
from clustr_aio.storage.resumable import Resumable, UploadInfo


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
async def store(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocalResumableStore]:
    """Both ways: with FSYNC every step is on a thread; without, a hold and a commit that
    frees no inode are made on the loop."""
    storage = LocalStorage(tmp_path, fsync=request.param)
    await storage.open()
    assert isinstance(storage, Resumable)
    yield storage.resumable_uploads()
    await storage.close()


def info(upload_id: str = "a" * 32, length: int | None = 100) -> UploadInfo:
    now = time.time()
    return UploadInfo(id=upload_id, length=length, created_at=now, expires_at=now + 60)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(store: LocalResumableStore, upload_id: str, size: int) -> bytes:
    return b"".join([bytes(b) async for b in store.read(upload_id, size)])


async def test_state_is_committed_with_the_bytes(store: LocalResumableStore) -> None:
    metadata_free = "b" * 32
    await store.create(info(metadata_free))
    async with store.hold(metadata_free) as held:
        await held.append(chunks(b"hello ", b"world"))
        assert held.written == 11
        committed = await store.get(metadata_free)
        assert committed is not None
        assert committed.offset == 0
        await held.commit(held.info.with_changes(offset=11))
    again = await store.get(metadata_free)
    assert again is not None
    assert again.offset == 11
    assert await read_all(store, metadata_free, 11) == b"hello world"
    assert await store.head(metadata_free, 5) == b"hello"


async def test_uncommitted_bytes_are_cut_off_when_held_again(store: LocalResumableStore) -> None:
    upload = info()
    await store.create(upload)
    async with store.hold(upload.id) as held:
        await held.commit(held.info.with_changes(offset=0))
        await held.append(chunks(b"never committed"))  # a process killed before its commit
    async with store.hold(upload.id) as held:
        assert held.info.offset == 0
        await held.append(chunks(b"kept"))
        await held.commit(held.info.with_changes(offset=4))
    data = store.folder / upload.id / "data"
    assert data.read_bytes() == b"kept"


async def test_rollback_discards_the_chunk(store: LocalResumableStore) -> None:
    upload = info()
    await store.create(upload)
    async with store.hold(upload.id) as held:
        await held.append(chunks(b"good"))
        await held.commit(held.info.with_changes(offset=4))
        await held.append(chunks(b"bad bytes"))
        await held.rollback()
        await held.append(chunks(b"!"))
        await held.commit(held.info.with_changes(offset=5))
    assert await read_all(store, upload.id, 5) == b"good!"


async def test_a_stream_that_fails_still_writes_what_it_delivered(
    store: LocalResumableStore,
) -> None:
    upload = info()
    await store.create(upload)

    async def broken() -> AsyncIterator[bytes]:
        yield b"arrived"
        raise ConnectionResetError

    async with store.hold(upload.id) as held:
        with pytest.raises(ConnectionResetError):
            await held.append(broken())
        assert held.written == 7


async def test_one_holder_at_a_time(store: LocalResumableStore) -> None:
    upload = info()
    await store.create(upload)
    async with store.hold(upload.id):
        with pytest.raises(UploadLocked):
            async with store.hold(upload.id):
                pass
    async with store.hold(upload.id):  # released with the block
        pass


async def test_an_upload_created_held_is_held_from_its_creation(
    store: LocalResumableStore,
) -> None:
    """creation-with-upload: made and locked in one trip; its first chunk committed as any."""
    upload = info()
    async with store.create_held(upload) as held:
        assert await store.get(upload.id) == upload
        with pytest.raises(UploadLocked):
            async with store.hold(upload.id):
                pass
        await held.append(chunks(b"first"))
        await held.commit(held.info.with_changes(offset=5))
    async with store.hold(upload.id) as again:  # released with the block
        assert again.info.offset == 5
    assert await read_all(store, upload.id, 5) == b"first"


async def test_the_lock_holds_across_processes_and_dies_with_its_holder(
    store: LocalResumableStore,
) -> None:
    upload = info()
    await store.create(upload)
    data = store.folder / upload.id / "data"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'rb+');"
        " fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(data),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        with pytest.raises(UploadLocked):
            async with store.hold(upload.id):
                pass
        holder.kill()  # as kill -9 of a worker mid-PATCH
        await holder.wait()
        async with store.hold(upload.id) as held:
            assert held.info.id == upload.id
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_remove_and_unknown_ids(store: LocalResumableStore) -> None:
    upload = info()
    await store.create(upload)
    async with store.hold(upload.id) as held:
        await held.remove()
    assert await store.get(upload.id) is None
    assert await store.ids() == []
    for bad in ("../etc", "", "a/b", "." * 3):
        assert await store.get(bad) is None
        with pytest.raises(NotFound):
            async with store.hold(bad):
                pass


async def test_finals_are_noted_on_their_parts(store: LocalResumableStore) -> None:
    await store.create(info("c" * 32))
    await store.refer("c" * 32, "d" * 32)
    assert await store.finals_of("c" * 32) == ["d" * 32]


async def test_orphans_are_swept_after_their_time(store: LocalResumableStore) -> None:
    orphan = store.folder / ("e" * 32)
    orphan.mkdir(parents=True)
    (orphan / "data").write_bytes(b"left by a crash between mkdir and info.json")
    torn = store.folder / ("f" * 32)  # a crash in the middle of its first state
    torn.mkdir()
    (torn / "info.json").write_bytes(b'{"id": "fff')
    assert await store.sweep_orphans(time.time() - 60) == 0  # young: maybe being created
    assert await store.sweep_orphans(time.time() + 1) == 2
    assert not orphan.exists()
    assert not torn.exists()


async def test_uploads_are_not_stored_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, fsync=False)
    await storage.open()
    try:
        await storage.resumable_uploads().create(info())
        assert (tmp_path / TUS_DIR / ("a" * 32)).is_dir()
        assert [names async for names in storage.names(1000)] == []  # never adopted
        assert await storage.locate(TUS_DIR) is None  # never served
    finally:
        await storage.close()


async def test_a_data_file_that_is_also_a_stored_file_is_never_cut(
    store: LocalResumableStore, tmp_path: Path
) -> None:
    """A stored file made of an upload's data (a second link, see ingest/in_place.py): a crash
    before the upload's state said so leaves bytes past its offset, which the next hold cuts
    off, and a published upload's data is released; neither may touch the stored file."""
    upload_id = "c" * 32
    await store.create(info(upload_id))
    async with store.hold(upload_id) as held:
        await held.append(chunks(b"x" * 60))
        await held.commit(held.info.with_changes(offset=60))
        await held.append(chunks(b"y" * 40))  # received, never committed
    stored = tmp_path / "stored.jpg"
    os.link(store.data_path(upload_id), stored)
    async with store.hold(upload_id) as held:  # cuts the 40 bytes: in a copy
        assert _contents(store.data_path(upload_id)) == b"x" * 60
        assert stored.read_bytes() == b"x" * 60 + b"y" * 40
        await held.append(chunks(b"z" * 40))
        await held.commit(held.info.with_changes(offset=100))
    os.unlink(stored)
    os.link(store.data_path(upload_id), stored)
    async with store.hold(upload_id) as held:
        await held.commit(held.info.with_changes(file_id="f" * 32), release_data=True)
        assert not _exists(store.data_path(upload_id))  # its name only: the bytes stay
    assert stored.read_bytes() == b"x" * 60 + b"z" * 40
    assert stored.stat().st_nlink == 1
    # Published, it changes no more: held without a lock, by any number of requests at once.
    async with store.hold(upload_id) as first, store.hold(upload_id) as second:
        assert first.info.file_id == second.info.file_id == "f" * 32
        await second.remove()
    assert await store.get(upload_id) is None
    assert stored.read_bytes() == b"x" * 60 + b"z" * 40


async def test_a_commit_is_a_line_appended_and_a_torn_line_never_counts(
    store: LocalResumableStore,
) -> None:
    """A commit appends the state as one line (no temporary file, no rename: the same inode);
    a line a crash cut short, or left as garbage, is skipped: the commit before it stands, and
    the next commit still counts."""
    upload = info()
    await store.create(upload)
    state = store.folder / upload.id / "info.json"
    inode = state.stat().st_ino
    async with store.hold(upload.id) as held:
        await held.append(chunks(b"x" * 10))
        await held.commit(held.info.with_changes(offset=10))
    assert state.stat().st_ino == inode
    assert len(state.read_bytes().splitlines()) == 2
    whole = state.read_bytes()
    for torn in (b'{"id": "a', b"\0" * 40 + b"\n"):  # cut short; a torn page
        state.write_bytes(whole + torn)
        again = await store.get(upload.id)
        assert again is not None
        assert again.offset == 10
    async with store.hold(upload.id) as held:  # after the torn line, one that counts
        await held.append(chunks(b"y" * 5))
        await held.commit(held.info.with_changes(offset=15))
    last = await store.get(upload.id)
    assert last is not None
    assert last.offset == 15
    state.write_bytes(upload.with_changes(offset=0).to_json())  # an earlier version's state
    legacy = await store.get(upload.id)
    assert legacy is not None
    assert legacy.offset == 0


async def test_a_long_state_file_is_written_anew(store: LocalResumableStore) -> None:
    upload = info(length=None)
    await store.create(upload)
    state = store.folder / upload.id / "info.json"
    async with store.hold(upload.id) as held:
        for offset in range(1, 400):
            await held.append(chunks(b"z"))
            await held.commit(held.info.with_changes(offset=offset))
    assert state.stat().st_size < 64 * 1024 + 1024  # compacted once past its bound
    again = await store.get(upload.id)
    assert again is not None
    assert again.offset == 399


def _contents(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _exists(path: str) -> bool:
    return os.path.exists(path)
