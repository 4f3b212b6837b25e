"""The hardened connection (clustr_aio.runtime.protocol), over raw sockets against the
production runner: parser errors as JSON, framing, timeouts, the connection limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JPEG, AiohttpClient, Client, assert_nothing_stored, serve_production
from tests.http.helpers import (
    BOUNDARY,
    RawResponse,
    chunk,
    multipart_headers,
    part_head,
    read_response,
    request_head,
)

pytestmark = pytest.mark.both_loops  # they touch transports: asyncio's and uvloop's differ

Connect = Callable[[], "asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]"]

SHORT = 0.5
"""The timeouts of these tests' servers, in seconds."""


@pytest.fixture
async def server(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(
        aiohttp_client,
        upload_dir,
        request_header_timeout=SHORT,
        body_idle_timeout=SHORT,
        keepalive_timeout=2 * SHORT,
        max_connections=8,
    )


@pytest.fixture
async def connect(server: Client) -> AsyncIterator[Callable[[], Any]]:
    writers: list[asyncio.StreamWriter] = []

    async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert server.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        writers.append(writer)
        return reader, writer

    yield open_one
    for writer in writers:
        writer.close()


async def exchange(connect: Callable[[], Any], request: bytes) -> tuple[RawResponse, bytes]:
    """Send ``request``; the response, and what follows it until the server closes."""
    reader, writer = await connect()
    writer.write(request)
    response = await read_response(reader)
    rest = await asyncio.wait_for(reader.read(), 5)
    return response, rest


def assert_json_error(response: RawResponse, status: int, *, not_echoed: bytes = b"") -> str:
    assert response.status == status, response
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]
    if not_echoed:
        assert not_echoed not in response.body
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail
    return detail


MARK = "zQx7"  # in every bad request, to check it is never echoed back

BAD_REQUESTS = {
    "bad chunk size": request_head(
        "POST", "/api/upload", {"Transfer-Encoding": "chunked", **multipart_headers()}
    )
    + f"{MARK}\r\n".encode(),
    "duplicate Content-Length": request_head(
        "POST", "/api/upload", {"Content-Length": "5", "Content-length": "6", "X-M": MARK}
    ),
    "header line over 8190 bytes": request_head("GET", "/", {"X-Long": MARK * 2100}),
    "129 headers": request_head("GET", "/", {f"X-{MARK}-{n}": "1" for n in range(129)}),
    "request line": f"GET /{MARK} HTTP/1.1 extra\r\nHost: x\r\n\r\n".encode(),
    "not HTTP": f"\x16\x03\x01{MARK}\r\n\r\n".encode(),
}


@pytest.mark.parametrize("request_bytes", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_parser_errors_are_json_without_the_request_bytes(
    connect: Connect, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response, rest = await exchange(connect, request_bytes)
    assert_json_error(response, 400, not_echoed=MARK.encode())
    assert rest == b""  # and the connection is closed
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_an_unknown_expect_is_a_json_417(connect: Connect) -> None:
    response, _ = await exchange(connect, request_head("GET", "/", {"Expect": f"{MARK}-bogus"}))
    detail = assert_json_error(response, 417, not_echoed=MARK.encode())
    assert "100-continue" in detail


async def test_chunked_in_http_1_0_is_a_400_and_the_connection_closes(connect: Connect) -> None:
    request = (
        b"POST /api/upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        + chunk(part_head("a.jpg") + JPEG)
    )
    response, rest = await exchange(connect, request)
    detail = assert_json_error(response, 400)
    assert "HTTP/1.0" in detail
    assert rest == b""


async def test_a_bad_chunk_mid_body_is_a_400_at_once(
    connect: Connect, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await connect()
    head = request_head(
        "POST", "/api/upload", {"Transfer-Encoding": "chunked", **multipart_headers()}
    )
    writer.write(head + chunk(part_head("a.jpg") + JPEG * 100))
    await asyncio.sleep(0.1)  # the upload is under way, its temporary file written
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        writer.write(f"{MARK}\r\n".encode())
        response = await read_response(reader)
    assert time.monotonic() - started < SHORT  # not the body timeout: at once
    assert_json_error(response, 400, not_echoed=MARK.encode())
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert_nothing_stored(upload_dir)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- timeouts


async def test_headers_sent_a_byte_at_a_time_get_a_408(connect: Connect) -> None:
    reader, writer = await connect()
    started = time.monotonic()
    answer = asyncio.create_task(read_response(reader))
    # 20 bytes, 0.3 x SHORT apart: longer than SHORT, and none due just as the timeout closes
    # the connection (a byte written after the close meets a reset, which can take the answer).
    for byte in b"GET / HTTP/1.1\r\nHost":
        writer.write(bytes([byte]))
        await asyncio.wait({answer}, timeout=0.3 * SHORT)
        if answer.done():  # writing on would meet a reset
            break
    response = await answer
    assert_json_error(response, 408)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < 3 * SHORT


async def test_a_stalled_body_gets_a_408_and_nothing_is_kept(
    connect: Connect, upload_dir: Path
) -> None:
    reader, writer = await connect()
    body = part_head("a.jpg") + JPEG * 100
    head = request_head("POST", "/api/upload", {"Content-Length": "1000000", **multipart_headers()})
    writer.write(head + body)  # and then nothing
    started = time.monotonic()
    response = await read_response(reader)
    assert time.monotonic() - started < 3 * SHORT
    detail = assert_json_error(response, 408)
    assert "no body bytes" in detail
    assert response.headers["Connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert_nothing_stored(upload_dir)


async def test_a_body_that_keeps_coming_is_not_timed_out(
    connect: Connect, upload_dir: Path
) -> None:
    reader, writer = await connect()
    data = JPEG * 8
    body = part_head("slow.jpg") + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = request_head(
        "POST", "/api/upload", {"Content-Length": str(len(body)), **multipart_headers()}
    )
    writer.write(head)
    pieces = [body[at : at + len(body) // 6] for at in range(0, len(body), len(body) // 6)]
    for piece in pieces:  # 6+ pieces, SHORT / 2 apart: longer than SHORT in all
        writer.write(piece)
        await asyncio.sleep(SHORT / 2)
    response = await read_response(reader)
    assert response.status == 200, response.body


async def test_a_body_trickled_under_the_minimum_rate_gets_a_408_and_nothing_is_kept(
    aiohttp_client: AiohttpClient, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Never idle for BODY_IDLE_TIMEOUT (a byte every SHORT / 5), yet far under MIN_BODY_RATE:
    cut after one window, however much body is still to come."""
    server = await serve_production(
        aiohttp_client, upload_dir, body_idle_timeout=SHORT, min_body_rate=2000
    )
    assert server.server.port is not None
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", server.server.port))
    sock.setblocking(False)
    head = request_head("POST", "/api/upload", {"Content-Length": "1000000", **multipart_headers()})
    await loop.sock_sendall(sock, head + part_head("a.jpg") + JPEG)
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(OSError):  # the server closed: its answer is in
            while True:
                await asyncio.sleep(SHORT / 5)
                await loop.sock_sendall(sock, b"\x00")

    sender = asyncio.ensure_future(trickle())
    try:
        with caplog.at_level(logging.INFO):
            # The server closes with trickled bytes unread, so its kernel may answer the next
            # ones with a reset: read what arrived before it, as a client's socket can.
            received = await asyncio.wait_for(_received_until_closed(sock), 10)
    finally:
        sender.cancel()
        sock.close()
    elapsed = time.monotonic() - started
    reader = asyncio.StreamReader()
    reader.feed_data(received)
    reader.feed_eof()
    response = await read_response(reader)
    detail = assert_json_error(response, 408)
    assert "slower than 2000 bytes/s" in detail, detail
    assert SHORT <= elapsed < 4 * SHORT
    assert response.headers["Connection"] == "close"
    assert any("MIN_BODY_RATE" in r.getMessage() for r in caplog.records)
    assert_nothing_stored(upload_dir)


async def _received_until_closed(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := await loop.sock_recv(sock, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    connect: Connect,
) -> None:
    reader, _ = await connect()  # never sends anything
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert SHORT <= time.monotonic() - started < 6 * SHORT


async def test_between_requests_the_keepalive_timeout_applies(connect: Connect) -> None:
    reader, writer = await connect()
    writer.write(request_head("GET", "/"))
    response = await read_response(reader)
    assert response.status == 200
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert SHORT <= time.monotonic() - started < 6 * SHORT


# --------------------------------------------------------------------------- connection limit


async def test_at_the_connection_limit_the_longest_idle_makes_room(connect: Connect) -> None:
    idle = [await connect() for _ in range(8)]  # the limit
    await asyncio.sleep(0.05)
    reader, writer = await connect()
    writer.write(request_head("GET", "/"))
    response = await read_response(reader)
    assert response.status == 200
    first_reader, _ = idle[0]
    assert await asyncio.wait_for(first_reader.read(), 2) == b""  # the oldest was closed


async def test_when_every_connection_is_busy_a_new_one_gets_a_503(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    # Timeouts that cannot fire while a loaded machine gets the eight bodies going: with
    # SHORT ones a body that went idle (or a head not yet parsed) made a connection evictable,
    # the newcomer was let in, and it saw nothing but its own header timeout's close.
    server = await serve_production(
        aiohttp_client, upload_dir, body_idle_timeout=30, max_connections=8
    )
    assert server.server.port is not None
    assert server.server.runner is not None
    guard = server.server.runner.server.guard  # type: ignore[union-attr]
    writers = []
    for n in range(8):
        _, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        writers.append(writer)
        head = request_head(
            "POST", "/api/upload", {"Content-Length": "1000000", **multipart_headers()}
        )
        writer.write(head + part_head(f"{n}.jpg") + JPEG)
    for _ in range(500):  # until every one is handling its upload (none evictable)
        if guard.open == 8 and not guard.idle:
            break
        await asyncio.sleep(0.01)
    assert guard.open == 8
    assert not guard.idle
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    writers.append(writer)
    response = await read_response(reader)
    assert_json_error_canned(response)
    for writer in writers:
        writer.close()


def assert_json_error_canned(response: RawResponse) -> None:
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert "connections" in response.json()["detail"]


# --------------------------------------------------------------------------- head size


async def test_a_head_over_64_kib_is_a_431_and_the_connection_closes(connect: Connect) -> None:
    reader, writer = await connect()
    lines = b"".join(b"X-%03d: %s\r\n" % (n, b"a" * 8000) for n in range(9))  # 72 kB, no end
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + lines)
    response = await read_response(reader)
    detail = assert_json_error(response, 431, not_echoed=b"aaaa")
    assert "larger than 65536 bytes" in detail
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_a_large_head_under_the_limit_and_a_body_in_one_packet_are_fine(
    connect: Connect,
) -> None:
    reader, writer = await connect()
    lines = {f"X-{n}": "a" * 7000 for n in range(8)}  # 56 kB of headers
    body = part_head("big.jpg") + JPEG + bytes(200_000) + f"\r\n--{BOUNDARY}--\r\n".encode()
    headers = {**lines, "Content-Length": str(len(body)), **multipart_headers()}
    writer.write(request_head("POST", "/api/upload", headers) + body)  # one write
    response = await read_response(reader)
    assert response.status == 200, response.body
