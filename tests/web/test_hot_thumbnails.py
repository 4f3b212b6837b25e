"""Hot thumbnail GETs answered by the connection (clustr_aio/web/hot_thumbnails.py), through
the production runner with libvips rendering: the same answer as the route's, byte for byte
but the date and request id; keep-alive and pipelined requests in order; deletes in this
process and in another; metrics, the access log, signed URLs; what goes to the route."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from clustr_aio.auth.signing import sign_path
from clustr_aio.catalog.changes import ChangeCounter
from clustr_aio.images.thumbnails import Thumbnailer
from clustr_aio.runtime.protocol import GuardedServer
from clustr_aio.web.hot_files import HotFiles
from clustr_aio.web.hot_thumbnails import KEPT_BODY, HotThumbnails, KeptThumbnails
from clustr_aio.web.keys import CATALOG, QUICK_RESPONDER, STORAGE
from clustr_aio.web.quick import QUICK_BACKLOG, QuickResponders
from tests.conftest import AiohttpClient, Client, quick_responder, serve_production
from tests.http.helpers import expect_error, read_head, upload_ok
from tests.images.photos import encode, picture

pytestmark = pytest.mark.both_loops  # the connection's own code, on both event loops

SECRET = "h" * 32
VARYING = {"Date", "X-Request-ID"}


def target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def responder(client: Client) -> HotThumbnails:
    return quick_responder(client.app, HotThumbnails)


async def served(client: Client, **overrides: Any) -> tuple[dict[str, Any], str]:
    """An uploaded photo's item, and its thumbnail's URL once the route has rendered it."""
    (item,) = await upload_ok(client, ("p.jpg", encode("jpg", picture((640, 480)))))
    url = target(item["thumbnail_url"])
    first = await client.get(url)
    assert first.status == 200
    return item, url


@pytest.fixture
async def hot(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(aiohttp_client, upload_dir)


def headers_of(response: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.items() if k not in VARYING]


def guarded(client: Client) -> GuardedServer:
    runner = client.server.runner
    assert runner is not None
    server = runner.server
    assert isinstance(server, GuardedServer)
    return server


@contextlib.contextmanager
def route_only(client: Client) -> Iterator[None]:
    """The server without its quick responder: what the route answers (the reference)."""
    server = guarded(client)
    quick, server.quick = server.quick, None
    try:
        yield
    finally:
        server.quick = quick


_VARYING_LINE = re.compile(rb"\r\n(Date|X-Request-ID): [^\r]*")


def masked(head: bytes) -> bytes:
    """A response head with the date's and the request id's values taken out."""
    return _VARYING_LINE.sub(rb"\r\n\1: ...", head)


async def exchange(
    client: Client, requests: list[bytes], *, pause: float = 0.0, split: int = 0
) -> list[tuple[bytes, bytes]]:
    """Send each request on one connection (each cut after ``split`` bytes and its rest sent
    ``pause`` seconds later, when asked), and read each answer's head and body, as sent."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    answers = []
    try:
        for request in requests:
            if split:
                writer.write(request[:split])
                await writer.drain()
                await asyncio.sleep(pause)
                request = request[split:]
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"\r\nContent-Length: (\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            answers.append((head, body))
    finally:
        writer.close()
    return answers


def get(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


BROWSER = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    "Accept: image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5\r\n"
    "Accept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    "Connection: keep-alive\r\nReferer: http://127.0.0.1/gallery\r\nSec-Fetch-Dest: image\r\n"
    "Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\nPriority: u=5, i\r\n"
    "Cookie: theme=dark\r\nX-Forwarded-For: 192.0.2.7\r\n"
)


async def assert_same_as_the_route(
    client: Client,
    requests: list[bytes],
    *,
    quick: int | None = None,
    plain: int | None = None,
    kind: type[HotThumbnails | HotFiles] = HotThumbnails,
    **how: Any,
) -> list[tuple[bytes, bytes]]:
    """Each request's answer (on one connection) equals the route's byte for byte but the
    date and request id; ``quick`` of them were answered from the connection by the responder
    of class ``kind``, ``plain`` of those from the raw bytes (None: any number)."""
    with route_only(client):
        routed = await exchange(client, requests, **how)
    counted = quick_responder(client.app, kind)
    before, before_plain = counted.answered, counted.answered_plain
    answered = await exchange(client, requests, **how)
    if quick is not None:
        assert counted.answered == before + quick, requests
    if plain is not None:
        assert counted.answered_plain == before_plain + plain, requests
    for request, (head, body), (route_head, route_body) in zip(
        requests, answered, routed, strict=True
    ):
        assert masked(head) == masked(route_head), request
        assert body == route_body, request
    return answered


async def test_the_answer_is_the_routes(hot: Client) -> None:
    _item, url = await served(hot)
    etag = (await hot.get(url)).headers["Etag"]
    other_etag = (await hot.get(url + "?size=1024")).headers["Etag"]
    requests = [
        get(url + query, headers)
        for query in ("", "?size=1024", "?format=jpeg", "?size=1024&format=avif", "?size=256")
        for headers in (
            "",
            "Accept: image/avif\r\n",
            "Accept: image/jpeg;q=0.9, image/webp;q=0.1\r\n",
            "X-Request-ID: mine-42\r\n",
            "X-Request-ID: not a valid id!\r\n",
            f"If-None-Match: {etag}\r\n",  # the 304 where it names this thumbnail
            f"If-None-Match: W/{etag}, {other_etag}\r\n",
            'If-None-Match: "other"\r\n',
            "connection: Keep-Alive\r\nHOST:  spaced  \r\n"[: -len("HOST:  spaced  \r\n")],
            BROWSER,
        )
    ]
    # From the raw bytes (each request alone in a read: the parser holds nothing), and
    # from the parsed head (each head cut in two reads: the parser held its start).
    answers = await assert_same_as_the_route(
        hot, requests, quick=len(requests), plain=len(requests)
    )
    await assert_same_as_the_route(
        hot, requests, quick=len(requests), plain=0, split=20, pause=0.05
    )
    statuses = [head.split(b"\r\n")[0] for head, _ in answers]
    # Two targets are the 256-px WebP, whose ETag two If-None-Match name; one the 1024-px one.
    assert statuses.count(b"HTTP/1.1 304 Not Modified") == 5
    assert b"\r\nX-Request-ID: mine-42\r\n" in answers[3][0]
    assert b"Content-Type: image/avif\r\n" in answers[1][0]
    assert b"Vary: Accept\r\n" in answers[1][0]
    # Pipelined, all in one read: the same answers, in order.
    await assert_same_as_the_route(hot, [b"".join(requests)], plain=len(requests))


async def test_with_cors_on_the_answer_is_the_routes(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await serve_production(aiohttp_client, upload_dir, cors_origins=("*",))
    _item, url = await served(client)
    answers = await assert_same_as_the_route(client, [get(url), get(url + "?format=webp")], quick=2)
    assert b"\r\nVary: Origin\r\n" in answers[0][0]
    # With an Origin, aiohttp-cors answers: the route.
    await assert_same_as_the_route(client, [get(url, "Origin: http://example.com\r\n")], quick=0)


async def test_what_the_route_must_answer_goes_to_it(hot: Client) -> None:
    _item, url = await served(hot)
    id_ = url.split("/")[3]
    routed = [
        get(f"{url}?size=300"),  # 400
        get(f"{url}?format=gif"),  # 400
        get(f"{url}?size=256&size=1024"),  # repeated: the route takes the first
        get(f"{url}?owner=alice"),  # 404: the catalog has none of alice's
        get(f"{url}?"),
        get(url, "Origin: http://example.com\r\n"),
        get(url, "Authorization: Bearer nothing\r\n"),
        get(url, "X-API-Key: nothing\r\n"),
        get(url, "Range: bytes=0-9\r\n"),
        get(url, "If-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT\r\n"),
        get(url.replace(id_, id_.upper())),
        get(url.replace("/thumbnail", "/%74humbnail")),
        get(url.replace("/api/", "/api/./")),
        get(url, "Content-Length: 0\r\n"),
    ]
    for request in routed:
        await assert_same_as_the_route(hot, [request], quick=0)
    # Not plain enough to be read from the bytes; aiohttp's parser reads them (or refuses).
    unplain = [
        get(url, "Accept: image/avif\r\nAccept: image/jpeg\r\n"),  # a duplicate
        b"GET "
        + url.encode()
        + b" HTTP/1.1\r\nHost: x\r\nAccept: image/avif\r\n  ,image/jpeg\r\n\r\n",
        b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\nAccept : image/avif\r\n\r\n",
        b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\nAccept: image/\x01avif\r\n\r\n",
        b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\nAccept: image/avif\r\n\r\n",
        b"GET " + url.encode() + b"#top HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://x" + url.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\nGET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for request in unplain:
        await assert_same_as_the_route(hot, [request], plain=0)
    for request in (
        get(url, "Connection: close\r\n"),
        f"GET {url} HTTP/1.0\r\nHost: x\r\n\r\n".encode(),
        f"HEAD {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),
    ):
        before = responder(hot).answered
        reader, writer = await asyncio.open_connection(hot.server.host, hot.server.port)
        writer.write(request)
        assert (await read_head(reader)).status in (200, 405), request
        writer.close()
        assert responder(hot).answered == before
    other = "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail"
    assert await expect_error(await hot.get(other), 404)


async def test_keep_alive_and_pipelined_requests_keep_their_order(hot: Client) -> None:
    _item, url = await served(hot)
    host, port = hot.server.host, hot.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    request = get(url)
    slow = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    upload = b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    before = responder(hot).answered

    async def answers(count: int) -> list[tuple[bytes, bytes]]:
        got = []
        for _ in range(count):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"\r\nContent-Length: (\d+)", head)
            assert length is not None
            got.append((head.split(b"\r\n")[0], await reader.readexactly(int(length[1]))))
        return got

    # The first from the raw bytes; the second waits for the route; the third behind it.
    writer.write(request + slow + request)
    bodies = await answers(3)
    assert [status for status, _ in bodies] == [b"HTTP/1.1 200 OK"] * 3
    assert bodies[1][1] == b'{"message": "Hello World"}'
    assert bodies[0][1] == bodies[2][1]
    assert bodies[0][1][:4] == b"RIFF"
    assert responder(hot).answered == before + 1
    writer.write(request)  # alone again, on the same connection: answered here
    await answers(1)
    assert responder(hot).answered == before + 2
    # A head cut short: the parser holds its start; its end, and one more, are answered here.
    writer.write(request + request[:10])
    await answers(1)
    await asyncio.sleep(0.05)
    writer.write(request[10:] + request)
    await answers(2)
    assert responder(hot).answered == before + 5
    # A body whose bytes look like a request: never answered as one, though it is whole.
    writer.write(upload)
    await asyncio.sleep(0.05)
    writer.write(request[:5])
    await asyncio.sleep(0.05)
    writer.write(b"\r\n")  # still not a request's end: the parser holds the body's 5 bytes
    ((status, _),) = await answers(1)
    assert status.startswith(b"HTTP/1.1 4")
    assert responder(hot).answered == before + 5
    writer.close()


async def test_a_client_that_reads_nothing_gets_no_more_quick_answers(hot: Client) -> None:
    _item, url = await served(hot)
    assert hot.server.port is not None
    _reader, writer = await asyncio.open_connection(hot.server.host, hot.server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = responder(hot).answered
    writer.write(get(url) * 5000)  # megabytes of answers, which the client never reads
    answered = -1
    while answered != responder(hot).answered:  # until the server stops answering
        answered = responder(hot).answered
        await asyncio.sleep(0.3)
    assert 0 < answered - before < 5000
    buffered = [
        connection.transport.get_write_buffer_size()
        for connection in guarded(hot).connections
        if connection.transport is not None
    ]
    # What the transport holds: what was there when the quick answers stopped, and one more
    # (the route's answers wait for the client to read: aiohttp's flow control).
    size = (await hot.get(url)).content_length or 0
    assert max(buffered) <= QUICK_BACKLOG + 2 * size + 64 * 1024, buffered
    writer.close()


async def test_timeouts_after_quick_answers(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await serve_production(
        aiohttp_client, upload_dir, keepalive_timeout=0.8, request_header_timeout=0.3
    )
    _item, url = await served(client)
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    before = responder(client).answered_plain
    # Each answer starts the keep-alive time again: 3 s of requests 0.5 s apart, one connection.
    for _ in range(7):
        await asyncio.sleep(0.5)
        writer.write(get(url))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert length is not None
        await reader.readexactly(int(length[1]))
    assert responder(client).answered_plain == before + 7
    # Then a head that never ends: the head timeout's 408 (the parser holds its start).
    writer.write(get(url)[:20])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 408 Request Timeout\r\n" in head
    writer.close()
    # And an idle connection after an answer is closed by the keep-alive time.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(get(url))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert await asyncio.wait_for(reader.read(), 10)  # the body, then the end
    assert reader.at_eof()
    writer.close()


async def test_the_access_log_line_is_the_routes(
    aiohttp_client: AiohttpClient, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await serve_production(aiohttp_client, upload_dir, access_log=True)
    _item, url = await served(client)
    etag = (await client.get(url)).headers["Etag"]
    caplog.set_level(logging.INFO, logger="clustr_aio.access")
    requests = [get(url + "?size=256", "X-Request-ID: logged-1\r\n")]
    requests.append(get(url, f"If-None-Match: {etag}\r\nX-Request-ID: logged-2\r\n"))
    for split in (0, 20):  # from the bytes, then parsed
        caplog.clear()
        await assert_same_as_the_route(client, requests, quick=2, split=split, pause=0.05)
        lines = [
            re.sub(r" [0-9.]+ms ", " ...ms ", r.getMessage())
            for r in caplog.records
            if r.name == "clustr_aio.access"
        ]
        assert len(lines) == 4, lines
        assert lines[:2] == lines[2:]  # the route's, then the quick answers'
        assert '"GET ' + url + '?size=256" 200 ' in lines[0]


async def test_a_file_deleted_here_is_a_404_at_once(hot: Client) -> None:
    item, url = await served(hot)
    assert (await hot.delete(f"/api/files/{item['id']}")).status == 204
    before = responder(hot).answered
    assert await expect_error(await hot.get(url), 404) == f"no stored file has id {item['id']!r}"
    assert responder(hot).answered == before


async def test_a_file_deleted_by_another_worker_is_a_404_at_once(
    hot: Client, upload_dir: Path
) -> None:
    item, url = await served(hot)
    before = responder(hot).answered
    assert (await hot.get(url)).status == 200
    assert responder(hot).answered == before + 1
    assert responder(hot).bodies.kept > 0  # from memory from now on
    # What another worker's delete does, with its own thumbnailer on the same folder (and
    # the host's removals counter): the file, the thumbnails, then the record.
    other = Thumbnailer(upload_dir / ".thumbnails")
    await other.start()
    await hot.app[STORAGE].delete([item["stored_filename"]])  # type: ignore[attr-defined]
    await other.remove([item["id"]])
    await other.close()
    await hot.app[CATALOG].delete([item["id"]])
    assert await expect_error(await hot.get(url), 404) == f"no stored file has id {item['id']!r}"
    assert responder(hot).answered == before + 1
    assert responder(hot).bodies.kept == 0


async def test_counted_in_metrics_and_logged(
    aiohttp_client: AiohttpClient, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await serve_production(aiohttp_client, upload_dir, access_log=True)
    _item, url = await served(client)
    series = (
        'clustr_http_requests_total{method="GET",route="/api/files/{id}/thumbnail",status="200"}'
    )

    async def count() -> float:
        text = await (await client.get("/metrics")).text()
        lines = text.splitlines()
        return float(next(line.split()[-1] for line in lines if line.startswith(series)))

    before = await count()
    caplog.set_level(logging.INFO, logger="clustr_aio.access")
    for _ in range(3):
        assert (await client.get(url, headers={"X-Request-ID": "logged-1"})).status == 200
    assert responder(client).answered == 3
    assert await count() == before + 3
    lines = [r.getMessage() for r in caplog.records if r.name == "clustr_aio.access"]
    quick = [line for line in lines if f'"GET {url} HTTP' not in line and "logged-1" in line]
    assert len(quick) == 3, lines
    assert f'"GET {url}" 200 ' in quick[0]


@pytest.fixture
async def signing(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    """A server whose files are not public: their thumbnails' URLs are signed."""
    return await serve_production(
        aiohttp_client, upload_dir, public_files=False, secret_key=(SECRET,)
    )


async def test_signed_urls_verified_here_and_refused_by_the_route(signing: Client) -> None:
    client = signing
    _item, url = await served(client)
    assert "signature=" in url
    assert (await client.get(url)).status == 200
    assert responder(client).answered == 1
    for tampered in (url.replace("expires=", "expires=1"), f"{url}&size=1024", url.split("?")[0]):
        response = await client.get(tampered)
        assert response.status == 403, tampered
    assert responder(client).answered == 1


async def test_a_signed_url_kept_ready_expires_as_the_routes_does(signing: Client) -> None:
    client = signing
    _item, url = await served(client)
    await assert_a_short_signature_expires(client, url.partition("?")[0], responder(client))


async def assert_a_short_signature_expires(
    client: Client, path: str, counted: HotThumbnails | HotFiles
) -> None:
    """``path`` signed until the next second but one: answered by ``counted``, then refused
    by the route."""
    short = f"{path}?{sign_path(path, (SECRET,), 2, now=float(int(time.time())))}"
    before = counted.answered
    assert (await client.get(short)).status == 200
    assert counted.answered == before + 1
    await asyncio.sleep(2.1)
    assert await expect_error(await client.get(short), 403)
    assert counted.answered == before + 1


async def test_not_with_keys_nor_rate_limits(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    for overrides in ({"auth": "keys"}, {"rate_limit_requests": (600, 60)}):
        client = await serve_production(aiohttp_client, upload_dir, **overrides)
        quick = client.app[QUICK_RESPONDER]  # stored files are still answered quickly
        assert isinstance(quick, QuickResponders)
        assert quick.of(HotThumbnails) is None
        await client.close()


async def test_a_failing_responder_leaves_the_request_to_the_route(
    hot: Client, caplog: pytest.LogCaptureFixture
) -> None:
    _item, url = await served(hot)

    class Broken:
        def __call__(self, message: Any) -> None:
            raise RuntimeError("a bug")

        def answer_plain(self, data: bytes, start: int) -> None:
            raise RuntimeError("a bug")

    guarded(hot).quick = Broken()
    response = await hot.get(url)
    assert response.status == 200
    assert (await response.read())[:4] == b"RIFF"
    assert caplog.text.count("the quick responder failed") == 2  # from the bytes, then parsed


def test_kept_thumbnails_are_bounded_and_dropped_by_a_removal(tmp_path: Path) -> None:
    counter = ChangeCounter(tmp_path / "removals")
    other = ChangeCounter(tmp_path / "removals")  # another process's, on the same file
    kept = KeptThumbnails(lambda: counter, 25_000)
    paths = []
    for name in "abcde":
        (tmp_path / name).write_bytes(name.encode() * 10_000)
        paths.append(str(tmp_path / name))
    a, b, c, d, e = paths
    first = kept.get(a, 10_000)
    assert first == b"a" * 10_000
    assert kept.get(a, 10_000) is first  # from memory
    kept.get(b, 10_000)
    kept.get(a, 10_000)  # a is the most recently sent now
    kept.get(c, 10_000)  # over 25,000 bytes: b goes
    assert kept.kept == 20_000
    assert kept.get(a, 10_000) is first
    for path in paths:
        kept.get(path, 10_000)
        assert kept.kept <= 25_000
    assert kept.get(c, 9_999) is None  # not the size it had: not answered from here
    (tmp_path / "large").write_bytes(b"x" * (KEPT_BODY + 1))
    fd = kept.get(str(tmp_path / "large"), KEPT_BODY + 1)
    assert isinstance(fd, int)  # sent from its file
    os.close(fd)
    assert kept.kept <= 25_000
    # Another process removes thumbnails: what was kept goes, and nothing is kept meanwhile.
    before = kept.get(e, 10_000)
    with other.changing():
        os.unlink(d)
        fd = kept.get(e, 10_000)
        assert isinstance(fd, int)
        os.close(fd)
        assert kept.kept == 0
    assert kept.get(d, 10_000) is None
    again = kept.get(e, 10_000)
    assert again == before
    assert again is not before  # read afresh
    assert kept.kept == 10_000
    counter.close()
    other.close()
