"""Stored-file GETs answered by the connection (clustr_aio/web/hot_files.py), through the
production runner: the same answer as the route's, byte for byte but the date and request id,
from the raw bytes and from the parsed head, pipelined too; what the route must answer (ranges,
preconditions, CORS, dot-names, symlinks, folders, large files, refused signatures); a file
deleted or replaced; metrics and the access log."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest

from clustr_aio.web.hot_files import LARGEST, HotFiles
from clustr_aio.web.quick import QUICK_BACKLOG_TOTAL
from tests.conftest import AiohttpClient, Client, quick_responder, serve_production
from tests.http.helpers import expect_error, read_head, upload_ok
from tests.images.photos import encode, picture
from tests.web.test_hot_thumbnails import (
    BROWSER,
    SECRET,
    assert_a_short_signature_expires,
    assert_same_as_the_route,
    get,
    guarded,
    target,
)

pytestmark = pytest.mark.both_loops  # the connection's own code, on both event loops

PHOTO = encode("jpg", picture((1600, 1200)))  # larger than SMALL_FILE: sent with sendfile


def responder(client: Client) -> HotFiles:
    return quick_responder(client.app, HotFiles)


async def same(
    client: Client,
    requests: list[bytes],
    *,
    quick: int | None = None,
    plain: int | None = None,
    split: int = 0,
    pause: float = 0.0,
) -> list[tuple[bytes, bytes]]:
    return await assert_same_as_the_route(
        client, requests, quick=quick, plain=plain, kind=HotFiles, split=split, pause=pause
    )


async def stored(client: Client, name: str = "p.jpg", data: bytes = PHOTO) -> str:
    """An uploaded file's URL (path and query), as the upload answered it."""
    (item,) = await upload_ok(client, (name, data))
    return target(item["preview_url"])


@pytest.fixture
async def hot(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(aiohttp_client, upload_dir)


async def test_the_answer_is_the_routes(hot: Client) -> None:
    url = await stored(hot)
    requests = [
        get(url, headers)
        for headers in (
            "",
            "X-Request-ID: mine-42\r\n",
            "X-Request-ID: not a valid id!\r\n",
            "connection: Keep-Alive\r\n",
            BROWSER,
        )
    ]
    # From the raw bytes (each request alone in a read: the parser holds nothing), and
    # from the parsed head (each head cut in two reads: the parser held its start).
    answers = await same(hot, requests, quick=len(requests), plain=len(requests))
    await same(hot, requests, quick=len(requests), plain=0, split=20, pause=0.05)
    assert all(body == PHOTO for _, body in answers)
    assert b"\r\nX-Request-ID: mine-42\r\n" in answers[1][0]
    assert b"\r\nAccept-Ranges: bytes\r\n" in answers[0][0]
    # Pipelined, all in one read: the same answers, in order.
    await same(hot, [b"".join(requests)], plain=len(requests))


async def test_with_cors_on_the_answer_is_the_routes(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await serve_production(aiohttp_client, upload_dir, cors_origins=("*",))
    url = await stored(client)
    (answer,) = await same(client, [get(url)], quick=1)
    assert b"\r\nVary: Origin\r\n" in answer[0]
    await same(client, [get(url, "Origin: http://example.com\r\n")], quick=0)


async def test_what_the_route_must_answer_goes_to_it(hot: Client, upload_dir: Path) -> None:
    url = await stored(hot)
    etag = (await hot.get(url)).headers["Etag"]
    (upload_dir / "folder.jpg").mkdir()
    (upload_dir / "link.jpg").symlink_to(upload_dir / url.rsplit("/", 1)[1])
    (upload_dir / "big.jpg").write_bytes(b"\xff" * (LARGEST + 1))
    routed = [
        get(url, "Range: bytes=0-9\r\n"),  # 206
        get(url, "Range: bytes=999999999-\r\n"),  # 416
        get(url, f"If-None-Match: {etag}\r\n"),  # 304
        get(url, 'If-Match: "other"\r\n'),  # 412
        get(url, "If-Modified-Since: Tue, 01 Dec 2099 00:00:00 GMT\r\n"),
        get(url, "If-Unmodified-Since: Tue, 01 Dec 1999 00:00:00 GMT\r\n"),
        get(url, "Origin: http://example.com\r\n"),
        get(url, "Authorization: Bearer nothing\r\n"),
        get(url, "Content-Length: 0\r\n"),
        get(f"{url}?"),
        get(f"{url}?download=1"),
        get("/uploads/nothing.jpg"),  # 404
        get("/uploads/.catalog.sqlite3"),  # a dot-name: 404
        get("/uploads/.incoming"),
        get("/uploads/../config.toml"),
        get("/uploads/%2e%2e/config.toml"),
        get("/uploads/folder.jpg"),  # a folder: 404
        get("/uploads/link.jpg"),  # a symlink: 404
        get("/uploads/"),
        get("/uploads/big.jpg"),  # larger than LARGEST: the route's 200
        get(url.replace("/uploads/", "/uploads/./")),
        get(url.replace(".jpg", "%2Ejpg")),
    ]
    for request in routed:
        await same(hot, [request], quick=0)
    for request in (
        get(url, "Connection: close\r\n"),
        f"GET {url} HTTP/1.0\r\nHost: x\r\n\r\n".encode(),
        f"HEAD {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    ):
        before = responder(hot).answered
        reader, writer = await asyncio.open_connection(hot.server.host, hot.server.port)
        writer.write(request)
        assert (await read_head(reader)).status == 200, request
        writer.close()
        assert responder(hot).answered == before


async def test_a_file_deleted_or_replaced_is_answered_as_it_is_now(
    hot: Client, upload_dir: Path
) -> None:
    url = await stored(hot)
    path = upload_dir / url.rsplit("/", 1)[1]
    (first,) = await same(hot, [get(url)], quick=1)
    # Replaced on the disk by hand (another size and time): the new file and its own head.
    path.write_bytes(PHOTO[:1000])
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    (second,) = await same(hot, [get(url)], quick=1)
    assert second[1] == PHOTO[:1000]
    assert re.search(rb"Etag: [^\r]*", first[0]) != re.search(rb"Etag: [^\r]*", second[0])
    # Deleted (as another worker's DELETE does): the route's 404 at once.
    path.unlink()
    before = responder(hot).answered
    assert await expect_error(await hot.get(url), 404) == "Not Found"
    assert responder(hot).answered == before


async def test_counted_in_metrics_and_logged(
    aiohttp_client: AiohttpClient, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await serve_production(aiohttp_client, upload_dir, access_log=True)
    url = await stored(client)
    series = 'clustr_http_requests_total{method="GET",route="/uploads/{filename}",status="200"}'

    async def count() -> float:
        text = await (await client.get("/metrics")).text()
        lines = text.splitlines()
        return next((float(line.split()[-1]) for line in lines if line.startswith(series)), 0)

    before = await count()
    caplog.set_level(logging.INFO, logger="clustr_aio.access")
    for split in (0, 20):  # from the bytes, then parsed
        caplog.clear()
        await same(client, [get(url, "X-Request-ID: logged-1\r\n")], quick=1, split=split)
        lines = [
            re.sub(r" [0-9.]+ms ", " ...ms ", r.getMessage())
            for r in caplog.records
            if r.name == "clustr_aio.access"
        ]
        assert len(lines) == 2, lines
        assert lines[0] == lines[1]  # the route's, then the quick answer's
        assert f'"GET {url}" 200 {len(PHOTO)} ' in lines[0]
    assert await count() == before + 4
    assert responder(client).answered == 2


@pytest.fixture
async def signing(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    """A server whose files are not public: their URLs are signed."""
    return await serve_production(
        aiohttp_client, upload_dir, public_files=False, secret_key=(SECRET,)
    )


async def test_signed_urls_verified_here_and_refused_by_the_route(signing: Client) -> None:
    client = signing
    url = await stored(client)
    assert "signature=" in url
    await same(client, [get(url)], quick=1)
    path = url.partition("?")[0]
    for tampered in (url.replace("expires=", "expires=1"), f"{url}&size=1024", path):
        await same(client, [get(tampered)], quick=0)
        assert (await client.get(tampered)).status == 403, tampered
    await assert_a_short_signature_expires(client, path, responder(client))


async def test_with_keys_and_rate_limits_too(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    """/uploads asks for no key and is not rate limited: it is answered here all the same."""
    client = await serve_production(
        aiohttp_client, upload_dir, auth="keys", rate_limit_requests=(600, 60)
    )
    name = "kept.jpg"
    (upload_dir / name).write_bytes(PHOTO)  # as if uploaded (the route serves what is there)
    await same(client, [get(f"/uploads/{name}")], quick=1)


async def test_slow_clients_hold_a_bounded_backlog(hot: Client, upload_dir: Path) -> None:
    """Clients that read nothing: what the socket does not take of a quick answer waits in its
    transport, but in all of them together only up to QUICK_BACKLOG_TOTAL (and one answer
    more); the rest are the route's, which waits for each client to read."""
    size = LARGEST
    (upload_dir / "large.jpg").write_bytes(os.urandom(size))
    assert hot.server.port is not None
    loop = asyncio.get_running_loop()
    writers = []
    for _ in range(24):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.setblocking(False)
        await loop.sock_connect(sock, (hot.server.host, hot.server.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(get("/uploads/large.jpg") * 3)
        writers.append(writer)
    answered = -1
    while answered != responder(hot).answered:  # until the server stops answering
        answered = responder(hot).answered
        await asyncio.sleep(0.5)
    buffered = [
        connection.transport.get_write_buffer_size()
        for connection in guarded(hot).connections
        if connection.transport is not None
    ]
    assert answered > 0
    # The route's answers hold a block of the file each (web/sendfile.py's, on uvloop).
    assert sum(buffered) <= QUICK_BACKLOG_TOTAL + size + len(writers) * 320 * 1024, buffered
    for writer in writers:
        writer.close()
