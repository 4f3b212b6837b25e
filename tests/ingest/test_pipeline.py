"""The ingest pipeline without HTTP: a real MultipartStream over an in-memory body, into a real
LocalStorage in a temporary folder (clustr_aio.ingest.pipeline)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clustr_aio.domain.errors import (
    BrokenImage,
    MalformedUpload,
    NoFilesUploaded,
    UnsupportedFile,
    UploadTooLarge,
)
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.images.structure import ImageInfo
from clustr_aio.ingest.hashing import BATCH_BYTES, StreamHasher
from clustr_aio.ingest.multipart import MultipartStream, file_parts
from clustr_aio.ingest.pipeline import IngestPolicy, StoredFile, ingest_batch
from clustr_aio.storage.local import LocalStorage
from tests.conftest import JPEG, PNG, WEBP, assert_nothing_stored, stored_files, temp_files
from tests.http.helpers import BOUNDARY, Part, files_body, multipart_body
from tests.ingest.test_hashing import watched

POLICY = IngestPolicy(
    allowed_extensions=frozenset({"jpg", "jpeg", "png", "webp", "bin"}),
    limits=UploadLimits(max_file_size=64 * 1024, max_request_size=1024 * 1024, max_files=5),
)

FIXTURE_IMAGE = ImageInfo(32, 24, orientation=1, metadata_removed=False)
"""What the structure check reads from tests.conftest's JPEG, PNG and WEBP."""


class Body:
    """``read`` for MultipartStream: ``data`` in pieces of ``size`` bytes, then b"" (or, with
    ``then``, that exception instead of the rest)."""

    def __init__(self, data: bytes, size: int = 4096, then: BaseException | None = None) -> None:
        self.data = data
        self.size = size
        self.then = then
        self.pos = 0

    async def __call__(self) -> bytes:
        if self.then is not None and self.pos >= len(self.data):
            raise self.then
        piece = self.data[self.pos : self.pos + self.size]
        self.pos += len(piece)
        return piece


@pytest.fixture
async def storage(upload_dir: Path) -> AsyncIterator[LocalStorage]:
    # A small write block, so that files of a few KiB already span several thread-pool writes.
    storage = LocalStorage(upload_dir, write_block=1024)
    await storage.open()
    yield storage
    await storage.close()


async def ingest(
    storage: LocalStorage, body: bytes | Body, policy: IngestPolicy = POLICY
) -> list[StoredFile]:
    read = body if isinstance(body, Body) else Body(body)
    limits = policy.limits
    stream = MultipartStream(limits.counting(read), BOUNDARY.encode())
    return await ingest_batch(file_parts(stream, policy.field_name), storage, policy)


@pytest.mark.parametrize("size", [1, 5, 13, 4096, 1 << 20])
async def test_files_are_stored_and_described_in_order(
    storage: LocalStorage, upload_dir: Path, size: int
) -> None:
    files = [("a.jpg", JPEG), ("b.png", PNG * 3), ("c.webp", WEBP), ("d.bin", b"\x00\x01")]
    stored = await ingest(storage, Body(files_body(*files), size))
    assert [
        (s.stored_filename, s.original_filename, s.file_size, s.content_type) for s in stored
    ] == [
        ("a.jpg", "a.jpg", len(JPEG), "image/jpeg"),
        ("b.png", "b.png", len(PNG) * 3, "image/png"),
        ("c.webp", "c.webp", len(WEBP), "image/webp"),
        ("d.bin", "d.bin", 2, "application/octet-stream"),
    ]
    # Hashed as they streamed past (in one piece or a byte at a time), ids in arrival order.
    assert [s.sha256 for s in stored] == [hashlib.sha256(data).hexdigest() for _, data in files]
    assert [s.id for s in stored] == sorted(s.id for s in stored)
    assert not any(s.duplicate for s in stored)
    # The structure check read each image's size (the fixtures' own), and the record kept it.
    image = FIXTURE_IMAGE
    assert [(s.width, s.height, s.orientation, s.metadata_removed) for s in stored] == [
        *[(image.width, image.height, image.orientation, image.metadata_removed)] * 3,
        (None, None, None, False),
    ]
    for name, data in files:
        assert (upload_dir / name).read_bytes() == data
    assert temp_files(upload_dir) == []


async def test_a_file_of_fewer_bytes_than_the_signature_window(storage: LocalStorage) -> None:
    # Sniffed as a JPEG from its 3 bytes, then found to be no whole one.
    with pytest.raises(BrokenImage, match=r"'tiny\.jpg' is not a valid JPEG image: it ends inside"):
        await ingest(storage, Body(files_body(("tiny.jpg", b"\xff\xd8\xff")), 1))
    [stored] = await ingest(storage, Body(files_body(("tiny.bin", b"\xff\xd8\xff")), 1))
    assert stored.file_size == 3
    assert stored.content_type == "application/octet-stream"


async def test_stored_names_are_safe_and_numbered(storage: LocalStorage, upload_dir: Path) -> None:
    stored = await ingest(storage, files_body(("../a.JPG", JPEG), ("a.jpg", JPEG)))
    assert [s.stored_filename for s in stored] == ["a.jpg", "a-1.jpg"]
    assert [s.original_filename for s in stored] == ["../a.JPG", "a.jpg"]


async def test_other_fields_are_skipped(storage: LocalStorage, upload_dir: Path) -> None:
    body = multipart_body(
        Part(b"caption", filename=None, name="title"),
        Part(JPEG, "a.jpg"),
        Part(PNG, "b.png", name="avatar"),
    )
    assert [s.stored_filename for s in await ingest(storage, body)] == ["a.jpg"]
    assert stored_files(upload_dir) == ["a.jpg"]


@pytest.mark.parametrize(
    "body",
    [
        multipart_body(),
        multipart_body(Part(b"x", filename=None, name="title")),
        multipart_body(Part(b"", "")),  # an empty <input type=file>
    ],
)
async def test_no_files_part_is_no_files_uploaded(
    storage: LocalStorage, upload_dir: Path, body: bytes
) -> None:
    with pytest.raises(NoFilesUploaded):
        await ingest(storage, body)
    assert_nothing_stored(upload_dir)


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ([("a.jpg", JPEG), ("b.txt", b"text")], UnsupportedFile),
        ([("a.jpg", JPEG), ("b.png", JPEG)], UnsupportedFile),
        ([("a.jpg", JPEG), ("", JPEG)], UnsupportedFile),  # bytes but no name
        ([("a.jpg", JPEG), ("b.jpg", b"")], UnsupportedFile),
        ([("a.jpg", JPEG), ("big.png", PNG + bytes(64 * 1024))], UploadTooLarge),
        ([(f"{i}.jpg", JPEG) for i in range(6)], UploadTooLarge),
    ],
)
async def test_one_bad_file_stores_nothing(
    storage: LocalStorage, upload_dir: Path, files: list[tuple[str, bytes]], error: type
) -> None:
    with pytest.raises(error):
        await ingest(storage, Body(files_body(*files), 1000))
    assert_nothing_stored(upload_dir)


async def test_an_oversized_file_stops_the_reading(storage: LocalStorage, upload_dir: Path) -> None:
    body = Body(files_body(("big.jpg", JPEG + bytes(512 * 1024))), 4096)
    with pytest.raises(UploadTooLarge, match=r"big\.jpg"):
        await ingest(storage, body)
    # Refused within a read of the limit, not at the end of the body.
    assert body.pos <= POLICY.limits.max_file_size + 2 * 4096
    assert_nothing_stored(upload_dir)


async def test_an_oversized_request_stops_the_reading(
    storage: LocalStorage, upload_dir: Path
) -> None:
    policy = IngestPolicy(
        allowed_extensions=POLICY.allowed_extensions,
        limits=UploadLimits(max_file_size=10**9, max_request_size=100_000, max_files=5),
    )
    body = Body(files_body(("a.jpg", JPEG + bytes(400_000))), 4096)
    with pytest.raises(UploadTooLarge, match="request body"):
        await ingest(storage, body, policy)
    assert body.pos <= 100_000 + 4096
    assert_nothing_stored(upload_dir)


async def test_a_broken_body_after_good_files_stores_nothing(
    storage: LocalStorage, upload_dir: Path
) -> None:
    body = files_body(("a.jpg", JPEG), ("b.png", PNG * 10))
    with pytest.raises(MalformedUpload):
        await ingest(storage, body[:-100])
    assert_nothing_stored(upload_dir)


async def test_a_read_error_propagates_and_stores_nothing(
    storage: LocalStorage, upload_dir: Path
) -> None:
    whole = files_body(("a.jpg", JPEG), ("b.png", PNG * 20))
    body = Body(whole[: len(whole) // 2 + 500], 700, then=ConnectionResetError("client gone"))
    with pytest.raises(ConnectionResetError):
        await ingest(storage, body)
    assert_nothing_stored(upload_dir)


async def test_cancelled_mid_file_stores_nothing(storage: LocalStorage, upload_dir: Path) -> None:
    """As when aiohttp cancels the handler of a vanished client, or the server stops."""
    started = asyncio.Event()
    never = asyncio.Event()
    head = files_body(("a.jpg", JPEG))[:-50] + bytes(8 * 1024)
    sent = False

    async def read() -> bytes:
        nonlocal sent
        if not sent:
            sent = True
            return head
        started.set()
        await never.wait()
        return b""

    task = asyncio.create_task(
        ingest_batch(
            file_parts(MultipartStream(POLICY.limits.counting(read), BOUNDARY.encode()), "files"),
            storage,
            POLICY,
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_stored(upload_dir)


async def test_the_next_file_is_received_while_the_last_is_hashed(storage: LocalStorage) -> None:
    """A batch does not wait for a file's sha256 before it reads the next: with the hashing
    thread held up, the whole body is read, and the digests (right ones) come once it is free
    again."""
    files = [(f"{n}.bin", os.urandom(100_000 + 1000 * n)) for n in range(3)]
    body = Body(files_body(*files), 16 * 1024)
    policy = IngestPolicy(
        allowed_extensions=frozenset({"bin"}),
        limits=UploadLimits(max_file_size=1 << 20, max_request_size=8 << 20, max_files=5),
    )
    gate = threading.Event()
    stuck = StreamHasher()
    watched(stuck, gate=gate)
    await stuck.update(bytes(BATCH_BYTES))  # a batch: the hashing thread now waits on the gate
    try:
        task = asyncio.create_task(ingest(storage, body, policy))
        for _ in range(500):
            if body.pos == len(body.data):
                break
            await asyncio.sleep(0.01)
        assert body.pos == len(body.data), "the batch waited for a digest before reading on"
        await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        gate.set()
    stored = await task
    assert [s.sha256 for s in stored] == [hashlib.sha256(data).hexdigest() for _, data in files]
    stuck.release()
