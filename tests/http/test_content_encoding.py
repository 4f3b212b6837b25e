"""A request body with a Content-Encoding is refused with 415 before it is read: aiohttp would
inflate it as it is read (500 KB of gzip stored 513 MB), past every size limit."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from pathlib import Path

import pytest

from tests.conftest import JPEG, Client, assert_nothing_stored
from tests.http.helpers import expect_error, files_body, multipart_headers, read_head, request_head

BOMB_FILE = JPEG + bytes(64 * 1024 * 1024)  # 64 MiB that gzip squeezes to about 64 KiB


@pytest.fixture
def client(production_client: Client) -> Client:
    """Served as in production: with aiohttp's inflating switched off, say."""
    return production_client


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(files_body(("bomb.jpg", BOMB_FILE)), 9)),
        ("deflate", zlib.compress(files_body(("a.jpg", JPEG)))),
        ("br", b"\x0b\x02\x80not really brotli\x03"),
        ("GZip", gzip.compress(files_body(("a.jpg", JPEG)))),
        ("identity, gzip", gzip.compress(files_body(("a.jpg", JPEG)))),
        ("x-unheard-of", files_body(("a.jpg", JPEG))),
    ],
    ids=["gzip-bomb", "deflate", "br", "case", "identity-then-gzip", "unknown"],
)
async def test_an_encoded_body_is_415_and_nothing_is_stored(
    client: Client, upload_dir: Path, encoding: str, body: bytes
) -> None:
    headers = multipart_headers() | {"Content-Encoding": encoding}
    response = await client.post("/api/upload", data=body, headers=headers)
    detail = await expect_error(response, 415)
    assert "Content-Encoding" in detail
    assert encoding not in detail  # the client's value is never echoed
    assert_nothing_stored(upload_dir)


async def test_identity_is_no_encoding(client: Client) -> None:
    headers = multipart_headers() | {"Content-Encoding": "identity"}
    response = await client.post("/api/upload", data=files_body(("a.jpg", JPEG)), headers=headers)
    assert response.status == 200, await response.text()


async def test_an_encoded_body_is_refused_instead_of_100_continue(
    client: Client, upload_dir: Path
) -> None:
    """With Expect: 100-continue the refusal comes before the client sends any of the body."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        headers = multipart_headers() | {
            "Content-Encoding": "gzip",
            "Content-Length": "1000000",
            "Expect": "100-continue",
        }
        writer.write(request_head("POST", "/api/upload", headers))
        head = await read_head(reader)
        assert head.status == 415
        assert head.headers["Content-Type"].startswith("application/json")
    finally:
        writer.close()
    assert_nothing_stored(upload_dir)
