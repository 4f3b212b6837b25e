"""Every error is JSON ``{"detail": ...}``: no HTML, no plain text, no traceback."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from clustr_aio.storage.local import LocalBatch
from tests.conftest import JPEG, PNG, Client, assert_nothing_stored
from tests.http.helpers import expect_error, upload, upload_ok

SECRET = "secret-internal-detail-/srv/private"


@pytest.mark.parametrize("path", ["/nope", "/api", "/api/upload/extra", "/uploads/missing.jpg"])
async def test_unknown_path_is_404_json(client: Client, path: str) -> None:
    detail = await expect_error(await client.get(path), 404)
    assert detail == "Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/upload", "POST"),
        ("PUT", "/api/upload", "POST"),
        ("DELETE", "/api/upload", "POST"),
        ("POST", "/", "GET"),
        ("DELETE", "/", "GET"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(
    client: Client, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert await expect_error(response, 405) == "Method Not Allowed"
    assert allowed in response.headers["Allow"]


async def test_unexpected_exception_is_a_plain_500(
    client: Client,
    upload_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_publish(self: LocalBatch) -> list[str]:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(LocalBatch, "publish", broken_publish)
    with caplog.at_level(logging.ERROR, logger="clustr_aio"):
        response = await upload(client, ("a.jpg", JPEG), ("b.png", PNG))
        detail = await expect_error(response, 500)
    assert detail == "Internal Server Error"
    assert SECRET not in await response.text()
    # The operator gets the whole story in the log.
    assert any(SECRET in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert_nothing_stored(upload_dir)

    monkeypatch.undo()
    await upload_ok(client, ("a.jpg", JPEG))


async def test_disk_error_while_writing_is_a_500_and_leaves_nothing(
    client: Client, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_writev(fd: int, buffers: Sequence[bytes], /) -> int:
        raise OSError(errno.EIO, f"Input/output error {SECRET}")

    monkeypatch.setattr(os, "writev", failing_writev)
    response = await upload(client, ("a.jpg", JPEG), ("b.png", PNG))
    await expect_error(response, 500)
    assert SECRET not in await response.text()
    assert_nothing_stored(upload_dir)


async def test_full_disk_is_507_and_leaves_nothing(
    client: Client, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev
    calls = 0

    def filling_writev(fd: int, buffers: Sequence[bytes], /) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first file fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", filling_writev)
    response = await upload(client, ("a.jpg", JPEG), ("b.png", PNG))
    detail = await expect_error(response, 507)
    assert "space" in detail
    assert_nothing_stored(upload_dir)
