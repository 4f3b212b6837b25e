"""Hot thumbnail GETs answered by the connection (clustr_aio/web/hot_thumbnails.py), through
the production runner with libvips rendering: the same answer as the route's, byte for byte
but the date and request id; keep-alive and pipelined requests in order; deletes in this
process and in another; metrics, the access log, signed URLs; what goes to the route."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from clustr_aio.runtime.protocol import GuardedServer
from clustr_aio.web.hot_thumbnails import HotThumbnails
from clustr_aio.web.keys import CATALOG, QUICK_RESPONDER, STORAGE
from tests.conftest import AiohttpClient, Client, serve_production
from tests.http.helpers import expect_error, upload_ok
from tests.images.photos import encode, picture

SECRET = "h" * 32
VARYING = {"Date", "X-Request-ID"}


def target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def responder(client: Client) -> HotThumbnails:
    quick = client.app[QUICK_RESPONDER]
    assert isinstance(quick, HotThumbnails)
    return quick


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


async def test_the_answer_is_the_routes(hot: Client) -> None:
    _item, url = await served(hot)
    for query in ("", "?size=1024", "?format=jpeg", "?size=1024&format=avif"):
        path = url.partition("?")[0] + query
        # If-None-Match naming another thumbnail takes the route (a 200 too).
        routed = await hot.get(path, headers={"If-None-Match": '"other"'})
        before = responder(hot).answered
        quick = await hot.get(path)
        assert responder(hot).answered == before + 1, path
        assert quick.status == routed.status == 200
        assert headers_of(quick) == headers_of(routed)
        assert await quick.read() == await routed.read()
        assert quick.headers["X-Request-ID"] != routed.headers["X-Request-ID"]
    offered = await hot.get(url, headers={"X-Request-ID": "mine-42"})
    assert offered.headers["X-Request-ID"] == "mine-42"
    negotiated = await hot.get(url, headers={"Accept": "image/avif"})
    assert negotiated.headers["Content-Type"] == "image/avif"
    assert negotiated.headers["Vary"] == "Accept"


async def test_what_the_route_must_answer_goes_to_it(hot: Client) -> None:
    _item, url = await served(hot)
    cases: list[tuple[str, dict[str, str], int]] = [
        (f"{url}?size=300", {}, 400),
        (f"{url}?format=gif", {}, 400),
        (f"{url}?size=256&size=1024", {}, 200),  # repeated: the route takes the first
        (f"{url}?owner=alice", {}, 404),  # the catalog has none of alice's
        (url, {"If-None-Match": (await hot.get(url)).headers["Etag"]}, 304),
        (url, {"Origin": "http://example.com"}, 200),
        (url, {"Authorization": "Bearer nothing"}, 200),
        (url, {"Connection": "close"}, 200),
    ]
    for path, headers, status in cases:
        before = responder(hot).answered
        response = await hot.get(path, headers=headers)
        assert response.status == status, (path, headers)
        assert responder(hot).answered == before, (path, headers)
    head = await hot.head(url)
    assert head.status == 200
    other = "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail"
    assert await expect_error(await hot.get(other), 404)


async def test_keep_alive_and_pipelined_requests_keep_their_order(hot: Client) -> None:
    _item, url = await served(hot)
    host, port = hot.server.host, hot.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    get = f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    slow = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    before = responder(hot).answered
    writer.write(get + slow + get)  # the second waits for the route; the third behind it
    await writer.drain()
    bodies = []
    for _ in range(3):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        bodies.append((head.split(b"\r\n")[0], await reader.readexactly(length)))
    assert [status for status, _ in bodies] == [b"HTTP/1.1 200 OK"] * 3
    assert bodies[1][1] == b'{"message": "Hello World"}'
    assert bodies[0][1] == bodies[2][1]
    assert bodies[0][1][:4] == b"RIFF"
    assert responder(hot).answered == before + 1  # the third came behind the route's
    writer.write(get)  # alone again, on the same connection: answered here
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    assert responder(hot).answered == before + 2
    writer.close()


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
    assert (await hot.get(url)).status == 200
    # What another worker's delete does: the thumbnails, the file, then the record.
    shutil.rmtree(upload_dir / ".thumbnails" / item["id"])
    await hot.app[STORAGE].delete(item["stored_filename"])  # type: ignore[attr-defined]
    await hot.app[CATALOG].delete([item["id"]])
    before = responder(hot).answered
    assert await expect_error(await hot.get(url), 404) == f"no stored file has id {item['id']!r}"
    assert responder(hot).answered == before


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


async def test_signed_urls_verified_here_and_refused_by_the_route(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await serve_production(
        aiohttp_client, upload_dir, public_files=False, secret_key=(SECRET,)
    )
    _item, url = await served(client)
    assert "signature=" in url
    assert (await client.get(url)).status == 200
    assert responder(client).answered == 1
    for tampered in (url.replace("expires=", "expires=1"), f"{url}&size=1024", url.split("?")[0]):
        response = await client.get(tampered)
        assert response.status == 403, tampered
    assert responder(client).answered == 1


async def test_not_with_keys_nor_rate_limits(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    for overrides in ({"auth": "keys"}, {"rate_limit_requests": (600, 60)}):
        client = await serve_production(aiohttp_client, upload_dir, **overrides)
        assert QUICK_RESPONDER not in client.app
        await client.close()


async def test_a_failing_responder_leaves_the_request_to_the_route(
    hot: Client, caplog: pytest.LogCaptureFixture
) -> None:
    _item, url = await served(hot)
    runner = hot.server.runner
    assert runner is not None
    server = runner.server
    assert isinstance(server, GuardedServer)

    def broken(message: Any) -> None:
        raise RuntimeError("a bug")

    server.quick = broken
    response = await hot.get(url)
    assert response.status == 200
    assert (await response.read())[:4] == b"RIFF"
    assert "the quick responder failed" in caplog.text
