"""413: file size, request size and file count limits, enforced while the body streams in.

The "answered before the body is read" cases go over raw sockets: the test sends only a part of
what it declares and then waits for the answer. A server that waited for the whole body would
never answer (the wait times out and the test fails).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import JPEG, PNG, Client, assert_nothing_stored, stored_files
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    Part,
    RawResponse,
    chunk,
    chunked,
    eventually,
    expect_error,
    files_body,
    multipart_body,
    multipart_headers,
    part_head,
    post_body,
    read_head,
    read_response,
    request_head,
    upload,
    upload_ok,
)

KIB = 1024
MIB = 1024 * KIB


@asynccontextmanager
async def connection(
    client: Client,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        yield reader, writer
    finally:
        writer.close()


def upload_head(client: Client, headers: dict[str, str]) -> bytes:
    return request_head(
        "POST", "/api/upload", {**multipart_headers(), **headers}, port=client.server.port or 0
    )


async def send(client: Client, headers: dict[str, str], body: bytes = b"") -> RawResponse:
    """POST multipart ``body`` (maybe only the start of it) with ``headers``; the response."""
    async with connection(client) as (reader, writer):
        writer.write(upload_head(client, headers) + body)
        await writer.drain()
        return await read_response(reader)


# --------------------------------------------------------------------------- the limits


async def test_file_at_the_limit_passes_and_one_byte_more_is_413(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_file_size=4 * KIB)
    exact = JPEG + bytes(4 * KIB - len(JPEG))
    await upload_ok(client, ("exact.jpg", exact))
    detail = await expect_error(await upload(client, ("over.jpg", exact + b"x")), 413)
    assert "over.jpg" in detail
    assert str(4 * KIB) in detail
    assert stored_files(upload_dir) == ["exact.jpg"]


async def test_one_file_over_the_limit_among_small_ones_is_413(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_file_size=4 * KIB)
    files = [("a.jpg", JPEG), ("big.png", PNG + bytes(4 * KIB)), ("c.jpg", JPEG)]
    await expect_error(await upload(client, *files), 413)
    assert_nothing_stored(upload_dir)


async def test_request_at_the_limit_passes_and_one_byte_more_is_413(
    make_client: MakeClient, upload_dir: Path
) -> None:
    body = files_body(("a.jpg", JPEG))
    client = await make_client(max_request_size=len(body))
    await upload_ok(client, ("a.jpg", JPEG))
    longer = files_body(("a.jpg", JPEG + b"x"))
    detail = await expect_error(await post_body(client, longer), 413)
    assert str(len(body)) in detail
    assert stored_files(upload_dir) == ["a.jpg"]


async def test_more_than_max_files_is_413(make_client: MakeClient, upload_dir: Path) -> None:
    client = await make_client(max_files=3)
    await upload_ok(client, *((f"{i}.jpg", JPEG) for i in range(3)))
    assert len(stored_files(upload_dir)) == 3
    detail = await expect_error(await upload(client, *((f"x{i}.jpg", JPEG) for i in range(4))), 413)
    assert "3" in detail
    assert len(stored_files(upload_dir)) == 3


async def test_other_parts_count_toward_the_request_size_but_are_not_files(
    make_client: MakeClient, upload_dir: Path
) -> None:
    fields = [Part(b"v" * 100, filename=None, name=f"f{i}", content_type=None) for i in range(5)]
    body = multipart_body(Part(JPEG, "a.jpg"), *fields)
    client = await make_client(max_files=1, max_request_size=len(body))
    response = await post_body(client, body)
    assert response.status == 200, await response.text()

    bigger = multipart_body(Part(JPEG, "b.jpg"), *fields, Part(b"v", filename=None, name="x"))
    await expect_error(await post_body(client, bigger), 413)
    assert stored_files(upload_dir) == ["a.jpg"]


# --------------------------------------------------------------------------- answered early


async def test_file_over_the_limit_is_answered_before_the_body_ends(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_file_size=64 * KIB)
    declared = 256 * MIB  # within MAX_REQUEST_SIZE; only 1 MiB of it is ever sent
    response = await send(
        client, {"Content-Length": str(declared)}, part_head("big.jpg") + JPEG + bytes(MIB)
    )
    assert response.status == 413
    assert "big.jpg" in response.json()["detail"]
    assert_nothing_stored(upload_dir)


async def test_request_over_the_limit_is_answered_before_the_body_ends(
    make_client: MakeClient, upload_dir: Path
) -> None:
    # Chunked: no Content-Length to judge by, so the bytes are counted as they arrive.
    client = await make_client(max_request_size=256 * KIB)
    # 512 KiB: twice the limit, and the body never ends.
    body = chunk(part_head("a.jpg") + JPEG) + chunk(bytes(64 * KIB)) * 8
    response = await send(client, {"Transfer-Encoding": "chunked"}, body)
    assert response.status == 413
    assert str(256 * KIB) in response.json()["detail"]
    assert_nothing_stored(upload_dir)


async def test_too_many_files_is_answered_before_the_body_ends(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_files=3)
    four_files = b"".join(part_head(f"{i}.jpg") + JPEG + b"\r\n" for i in range(4))
    response = await send(client, {"Content-Length": str(64 * MIB)}, four_files)
    assert response.status == 413
    assert_nothing_stored(upload_dir)


async def test_declared_length_over_the_limit_is_answered_without_a_body(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_request_size=MIB)
    response = await send(client, {"Content-Length": str(MIB + 1)})
    assert response.status == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert str(MIB) in response.json()["detail"]
    assert_nothing_stored(upload_dir)


async def test_chunked_body_over_the_limit_is_413(
    make_client: MakeClient, upload_dir: Path
) -> None:
    body = files_body(("a.jpg", JPEG + bytes(300 * KIB)))
    client = await make_client(max_request_size=256 * KIB)
    response = await send(client, {"Transfer-Encoding": "chunked"}, chunked(body))
    assert response.status == 413
    assert_nothing_stored(upload_dir)


async def test_chunked_body_within_the_limit_is_stored(
    make_client: MakeClient, upload_dir: Path
) -> None:
    data = JPEG + bytes(200 * KIB)
    client = await make_client(max_request_size=256 * KIB)
    body = chunked(files_body(("a.jpg", data)), size=5000)
    response = await send(client, {"Transfer-Encoding": "chunked"}, body)
    assert response.status == 200, response.body
    assert (upload_dir / "a.jpg").read_bytes() == data


# --------------------------------------------------------------------------- Expect: 100-continue


async def test_expect_continue_over_the_limit_gets_413_instead_of_100(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_request_size=MIB)
    headers = {"Content-Length": str(10 * MIB), "Expect": "100-continue"}
    response = await send(client, headers)  # the first response there is
    assert response.status == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert len(response.headers["X-Request-ID"]) == 16  # though no middleware ran
    assert "detail" in response.json()
    assert_nothing_stored(upload_dir)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", 406), ("multipart/form-data", 400)],
)
async def test_expect_continue_with_hopeless_headers_is_refused_before_the_body(
    client: Client, content_type: str, status: int
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": "1000", "Expect": "100-continue"}
    response = await send(client, headers)
    assert response.status == status
    assert "detail" in response.json()


async def test_expect_continue_within_the_limit_gets_100_then_200(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(max_request_size=MIB)
    body = files_body(("a.jpg", JPEG))
    async with connection(client) as (reader, writer):
        headers = {"Content-Length": str(len(body)), "Expect": "100-continue"}
        writer.write(upload_head(client, headers))
        await writer.drain()
        interim = await read_head(reader)
        assert interim.status == 100
        writer.write(body)
        await writer.drain()
        response = await read_response(reader)
    assert response.status == 200, response.body
    assert response.json()["data"][0]["stored_filename"] == "a.jpg"
    assert (upload_dir / "a.jpg").read_bytes() == JPEG


async def test_expect_continue_without_length_gets_100(client: Client, upload_dir: Path) -> None:
    body = files_body(("a.jpg", JPEG))
    async with connection(client) as (reader, writer):
        headers = {"Transfer-Encoding": "chunked", "Expect": "100-continue"}
        writer.write(upload_head(client, headers))
        await writer.drain()
        assert (await read_head(reader)).status == 100
        writer.write(chunked(body))
        await writer.drain()
        response = await read_response(reader)
    assert response.status == 200, response.body
    assert stored_files(upload_dir) == ["a.jpg"]


async def test_an_unknown_expectation_is_417(client: Client, upload_dir: Path) -> None:
    headers = {"Content-Length": "1000", "Expect": "something-else"}
    response = await send(client, headers)
    assert response.status == 417
    assert b"something-else" in response.body
    assert_nothing_stored(upload_dir)


async def test_http_1_0_gets_no_100_continue(client: Client, upload_dir: Path) -> None:
    """An HTTP/1.0 client cannot take an interim response: it sends the body at once."""
    body = files_body(("a.jpg", JPEG))
    headers = {"Content-Length": str(len(body)), "Expect": "100-continue"}
    head = upload_head(client, headers).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    async with connection(client) as (reader, writer):
        writer.write(head + body)
        await writer.drain()
        response = await read_response(reader)
    assert response.status == 200, response.body
    assert stored_files(upload_dir) == ["a.jpg"]


async def test_the_100_continue_is_not_counted_as_response_bytes(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line's byte count is the final response's, as for any other request."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # the test server's access log
    body = files_body(("a.jpg", JPEG))
    async with connection(client) as (reader, writer):
        headers = {"Content-Length": str(len(body)), "Expect": "100-continue"}
        writer.write(upload_head(client, headers))
        await writer.drain()
        assert (await read_head(reader)).status == 100
        writer.write(body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        await reader.readexactly(length)

    def logged() -> bool:
        return any("POST /api/upload" in r.getMessage() for r in caplog.records)

    await eventually(logged)
    [line] = [r.getMessage() for r in caplog.records if "POST /api/upload" in r.getMessage()]
    assert f'" 200 {len(head) + length} ' in line, (line, len(head) + length)
