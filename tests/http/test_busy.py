"""503 with Retry-After, before the body is read, when the server is busy: MAX_CONCURRENT_UPLOADS
uploads are being received already, or it has no file descriptor left for a temporary file."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest

from clustr_aio.runtime.protocol import limit_accept_error_logs
from clustr_aio.storage import local
from tests.conftest import (
    JPEG,
    AiohttpClient,
    Client,
    assert_nothing_stored,
    serve_production,
    temp_files,
)
from tests.http.helpers import (
    eventually,
    expect_error,
    multipart_headers,
    part_head,
    read_head,
    request_head,
    upload,
)

pytestmark = pytest.mark.both_loops  # they touch transports: asyncio's and uvloop's differ


@pytest.fixture
async def one_at_a_time(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(aiohttp_client, upload_dir, max_concurrent_uploads=1)


async def test_one_upload_too_many_is_a_503_with_retry_after(
    one_at_a_time: Client, upload_dir: Path
) -> None:
    port = one_at_a_time.server.port
    assert port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = request_head("POST", "/api/upload", {"Content-Length": "100000", **multipart_headers()})
    writer.write(head + part_head("slow.jpg") + JPEG)  # in flight, and waiting for more
    await eventually(lambda: bool(temp_files(upload_dir)))

    response = await upload(one_at_a_time, ("b.jpg", JPEG))
    detail = await expect_error(response, 503)
    assert "too many uploads" in detail
    assert response.headers["Retry-After"] == "1"

    # With Expect: 100-continue, the 503 comes instead of the 100.
    second_reader, second_writer = await asyncio.open_connection("127.0.0.1", port)
    headers = {"Content-Length": "100000", "Expect": "100-continue", **multipart_headers()}
    second_writer.write(request_head("POST", "/api/upload", headers))
    refused = await read_head(second_reader)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    second_writer.close()

    writer.close()  # the first one gives up: its slot is free again
    await eventually(lambda: not temp_files(upload_dir))
    response = await upload(one_at_a_time, ("c.jpg", JPEG))
    assert response.status == 200, await response.text()


async def test_no_descriptor_left_for_a_temporary_file_is_a_503(
    production_client: Client, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_descriptors(path: Path) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(local, "_create", out_of_descriptors)
    response = await upload(production_client, ("a.jpg", JPEG * 2000))
    detail = await expect_error(response, 503)
    assert "too many files open" in detail
    assert response.headers["Retry-After"] == "1"
    assert_nothing_stored(upload_dir)


async def test_accept_errors_are_one_line_per_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    limit_accept_error_logs(loop)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(25_000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(previous)
    accept_lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(accept_lines) == 1
    assert not accept_lines[0].exc_info
    assert any(r.getMessage() == "something else" for r in caplog.records)
