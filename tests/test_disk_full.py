"""A full disk: 507 with a clear detail, nothing of the request left, and the server goes on.

Two ways to fill a disk, so something always runs:

- a real tmpfs of a few MiB mounted for the test (needs root, as in CI; skipped elsewhere):
  the kernel's own ENOSPC, and MIN_FREE_SPACE refusing uploads before the disk is full;
- errors injected at the storage layer's system calls (runs everywhere): ENOSPC/EDQUOT from a
  write and from the link that publishes a file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from clustr_aio.catalog.factory import SQLITE_FILE
from clustr_aio.storage import local
from clustr_aio.web.app import create_app
from tests.conftest import (
    JPEG,
    AiohttpClient,
    Client,
    assert_nothing_stored,
    make_settings,
    stored_files,
    temp_files,
)
from tests.http.helpers import (
    expect_error,
    files_body,
    multipart_headers,
    raw_request,
    request_head,
    upload_ok,
)
from tests.small_filesystem import free_bytes, tmpfs

MiB = 1024 * 1024
DEVICE_FULL = "not enough space left on the storage device"
RESERVE_REACHED = "not enough storage space left for this upload; try again later"


def jpeg_of(size: int) -> bytes:
    return JPEG + bytes(size - len(JPEG))


async def post_chunked(client: Client, body: bytes) -> Any:
    """POST without Content-Length (chunked), so no check can happen before the body."""

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 256 * 1024):
            yield body[at : at + 256 * 1024]

    return await client.post("/api/upload", data=pieces(), headers=multipart_headers())


async def serve(aiohttp_client: AiohttpClient, folder: Path, **overrides: Any) -> Client:
    settings = make_settings(folder, max_file_size=64 * MiB, **overrides)
    return await aiohttp_client(create_app(settings))


# --------------------------------------------------------------------------- a real tmpfs


async def test_disk_full_is_507_leaves_nothing_and_the_next_upload_works(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "2m") as folder:
        client = await serve(aiohttp_client, folder, min_free_space=0)
        free_before = free_bytes(folder)
        body = files_body(("small.jpg", JPEG), ("big.jpg", jpeg_of(3 * MiB)))
        detail = await expect_error(await post_chunked(client, body), 507)
        assert detail == DEVICE_FULL
        assert_nothing_stored(folder)
        assert free_bytes(folder) >= free_before - 64 * 1024  # the space came back
        assert [item["stored_filename"] for item in await upload_ok(client, ("a.jpg", JPEG))] == [
            "a.jpg"
        ]
        await client.close()


async def test_disk_filled_by_someone_else_then_freed(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "2m") as folder:
        client = await serve(aiohttp_client, folder, min_free_space=0)
        filler = folder / ".filler"  # a dot-name: never served, never taken for an upload
        filler.write_bytes(bytes(free_bytes(folder) - 100 * 1024))
        await expect_error(
            await post_chunked(client, files_body(("a.jpg", jpeg_of(MiB // 2)))), 507
        )
        files = [p.name for p in folder.iterdir() if p.is_file()]
        assert [name for name in files if not name.startswith(SQLITE_FILE)] == [".filler"]
        filler.unlink()
        await upload_ok(client, ("a.jpg", jpeg_of(MiB // 2)))
        await client.close()


async def test_min_free_space_refuses_a_declared_length_before_the_body(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "4m") as folder:
        client = await serve(aiohttp_client, folder, min_free_space=MiB)
        body = files_body(("big.jpg", jpeg_of(3 * MiB + MiB // 2)))
        # Content-Length known: refused up front (aiohttp's client sends one for bytes).
        response = await client.post("/api/upload", data=body, headers=multipart_headers())
        detail = await expect_error(response, 507)
        assert detail.startswith(f"not enough storage space left for an upload of {len(body)} ")
        # With Expect: 100-continue the client is told before it sends a byte of the body.
        assert client.port is not None
        headers = {
            **multipart_headers(),
            "Content-Length": str(len(body)),
            "Expect": "100-continue",
        }
        head = request_head("POST", "/api/upload", headers, port=client.port)
        raw = await raw_request("127.0.0.1", client.port, head)
        assert raw.status == 507
        assert raw.json()["detail"] == detail
        assert_nothing_stored(folder)
        await client.close()


async def test_min_free_space_stops_a_streamed_upload_before_the_disk_is_full(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "4m") as folder:
        client = await serve(aiohttp_client, folder, min_free_space=2 * MiB)
        body = files_body(("big.jpg", jpeg_of(5 * MiB)))  # more than the whole disk
        detail = await expect_error(await post_chunked(client, body), 507)
        # The reserve's message, not the kernel's ENOSPC: the disk never filled up.
        assert detail == RESERVE_REACHED
        assert_nothing_stored(folder)
        # An upload that leaves the reserve free is still welcome.
        await upload_ok(client, ("a.jpg", jpeg_of(MiB)))
        await client.close()


async def test_min_free_space_holds_when_the_disk_fills_after_a_free_space_reading(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check before the body may answer from a recent free-space reading, on the loop; the
    reserve itself is checked for real before the publish. A disk that someone else filled
    since the reading gets the upload refused all the same (after its body), nothing of it
    kept; once the reading is too old, the check before the body refuses it."""
    monkeypatch.setattr(local, "_SPACE_READING_SECONDS", 3600.0)  # however slow the machine
    with tmpfs(tmp_path / "small", "4m") as folder:
        client = await serve(aiohttp_client, folder, min_free_space=MiB)
        await upload_ok(client, ("a.jpg", JPEG))  # its publish took a reading: room
        filler = folder / ".filler"  # a dot-name: never served, never taken for an upload
        filler.write_bytes(bytes(free_bytes(folder) - MiB // 2))  # half the reserve is left
        body = files_body(("b.jpg", JPEG))
        response = await client.post("/api/upload", data=body, headers=multipart_headers())
        assert await expect_error(response, 507) == RESERVE_REACHED  # the publish's own check
        assert stored_files(folder) == ["a.jpg"]
        assert temp_files(folder) == []

        monkeypatch.setattr(local, "_SPACE_READING_SECONDS", 0.0)  # every reading is too old
        response = await client.post("/api/upload", data=body, headers=multipart_headers())
        detail = await expect_error(response, 507)  # refused before the body
        assert detail.startswith(f"not enough storage space left for an upload of {len(body)} ")
        filler.unlink()
        await upload_ok(client, ("c.jpg", JPEG))
        assert stored_files(folder) == ["a.jpg", "c.jpg"]
        await client.close()


# --------------------------------------------------------------------------- injected errors


def failing_once(call: Callable[..., Any], code: int, *, after: int = 0) -> Callable[..., Any]:
    """Wrap ``call`` so that its ``after``-th call (0: the first) raises OSError(code) once."""
    calls = 0

    def wrapper(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == after + 1:
            raise OSError(code, os.strerror(code))
        return call(*args)

    return wrapper


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_no_space_while_writing_is_507(
    aiohttp_client: AiohttpClient,
    upload_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    client = await serve(aiohttp_client, upload_dir, min_free_space=0)
    # The second block of the second file fails, as a disk filling up mid-request would.
    monkeypatch.setattr(local, "write_all", failing_once(local.write_all, code, after=2))
    body = files_body(("a.jpg", JPEG), ("b.jpg", jpeg_of(3 * MiB)))
    detail = await expect_error(await post_chunked(client, body), 507)
    assert detail == DEVICE_FULL
    assert_nothing_stored(upload_dir)
    await upload_ok(client, ("a.jpg", JPEG))


async def test_no_space_while_publishing_is_507_and_unpublishes(
    aiohttp_client: AiohttpClient, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory needs a new block for the second name: the first link is undone."""
    client = await serve(aiohttp_client, upload_dir, min_free_space=0)
    monkeypatch.setattr(os, "link", failing_once(os.link, errno.ENOSPC, after=1))
    body = files_body(("a.jpg", JPEG), ("b.jpg", JPEG))
    detail = await expect_error(await post_chunked(client, body), 507)
    assert detail == DEVICE_FULL
    assert_nothing_stored(upload_dir)
    await upload_ok(client, ("a.jpg", JPEG))
