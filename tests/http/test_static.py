"""``GET /uploads/{name}``: stored bytes with the right headers, and nothing else."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web

from clustr_aio.storage.base import Redirect, StoredLocation
from clustr_aio.web.app import create_app
from clustr_aio.web.keys import FILE_READER
from tests.conftest import JPEG, PNG, WEBP, AiohttpClient, Client, make_settings, temp_files
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    eventually,
    expect_error,
    multipart_headers,
    part_head,
    raw_request,
    read_response,
    request_head,
    upload_ok,
)

pytestmark = pytest.mark.both_loops  # they touch transports: asyncio's and uvloop's differ

SECRET = b"top secret, outside the upload folder"


async def get_raw(client: Client, target: str) -> tuple[int, bytes, str]:
    """GET ``target`` exactly as written (no client-side normalisation of ``..`` or ``%2e``)."""
    host, port = client.server.host, client.server.port or 0
    response = await raw_request(host, port, request_head("GET", target, port=port))
    return response.status, response.body, response.headers.get("Content-Type", "")


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [("a.jpg", JPEG, "image/jpeg"), ("b.png", PNG, "image/png"), ("c.webp", WEBP, "image/webp")],
)
async def test_stored_file_is_served_with_its_type(
    client: Client, name: str, data: bytes, content_type: str
) -> None:
    await upload_ok(client, (name, data))
    response = await client.get(f"/uploads/{name}")
    assert response.status == 200
    assert await response.read() == data
    assert response.content_type == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["ETag"]
    assert response.headers["Last-Modified"]
    assert response.headers["Accept-Ranges"] == "bytes"

    head = await client.head(f"/uploads/{name}")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(data)


async def test_conditional_requests_get_304(client: Client) -> None:
    await upload_ok(client, ("a.jpg", JPEG))
    first = await client.get("/uploads/a.jpg")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]

    by_etag = await client.get("/uploads/a.jpg", headers={"If-None-Match": etag})
    assert by_etag.status == 304
    assert await by_etag.read() == b""
    assert by_etag.headers["X-Content-Type-Options"] == "nosniff"

    by_date = await client.get("/uploads/a.jpg", headers={"If-Modified-Since": modified})
    assert by_date.status == 304

    other = await client.get("/uploads/a.jpg", headers={"If-None-Match": '"not-the-etag"'})
    assert other.status == 200
    assert await other.read() == JPEG
    old = await client.get(
        "/uploads/a.jpg", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert old.status == 200


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-3", 0, 3),
        ("bytes=10-19", 10, 19),
        ("bytes=-5", None, None),
        ("bytes=100-", 100, None),
    ],
)
async def test_single_range_is_206(
    client: Client, range_header: str, start: int | None, end: int | None
) -> None:
    await upload_ok(client, ("a.png", PNG))
    size = len(PNG)
    if start is None:  # suffix range: the last 5 bytes
        start, end = size - 5, size - 1
    end = size - 1 if end is None else end
    response = await client.get("/uploads/a.png", headers={"Range": range_header})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert await response.read() == PNG[start : end + 1]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "target", ["/uploads/", "/uploads", "/uploads/sub", "/uploads/sub/", "/uploads/sub/inner.jpg"]
)
async def test_no_directory_listing_and_no_sub_folders(
    client: Client, upload_dir: Path, target: str
) -> None:
    await upload_ok(client, ("listed.jpg", JPEG))
    (upload_dir / "sub").mkdir()
    (upload_dir / "sub" / "inner.jpg").write_bytes(JPEG)
    status, body, content_type = await get_raw(client, target)
    assert status == 404
    assert content_type.startswith("application/json")
    assert b"listed.jpg" not in body
    assert b"inner.jpg" not in body


async def test_symlinks_out_of_the_folder_are_not_followed(
    client: Client, upload_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(SECRET)
    os.symlink(outside, upload_dir / "link.jpg")
    os.symlink(tmp_path, upload_dir / "linkdir")
    for target in ("/uploads/link.jpg", "/uploads/linkdir/secret.jpg"):
        status, body, content_type = await get_raw(client, target)
        assert status == 404, target
        assert content_type.startswith("application/json")
        assert SECRET not in body


ESCAPES = [
    "/uploads/../secret.txt",
    "/uploads/../../secret.txt",
    "/uploads/%2e%2e/secret.txt",
    "/uploads/%2E%2E/secret.txt",
    "/uploads/%2e%2e%2fsecret.txt",
    "/uploads/..%2fsecret.txt",
    "/uploads/..%2Fsecret.txt",
    "/uploads/.%2e/secret.txt",
    "/uploads/%252e%252e/secret.txt",
    "/uploads/..\\secret.txt",
    "/uploads/..%5csecret.txt",
    "/uploads/sub/../../secret.txt",
    "/uploads//../secret.txt",
    "/uploads/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/uploads/....//secret.txt",
    "/uploads/%00../secret.txt",
]


@pytest.mark.parametrize("target", ESCAPES)
async def test_no_escape_from_the_folder(
    client: Client, upload_dir: Path, tmp_path: Path, target: str
) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (upload_dir / "sub").mkdir()
    status, body, content_type = await get_raw(client, target)
    assert status in (400, 403, 404), (target, status)
    assert SECRET not in body
    assert b"root:" not in body
    assert content_type.startswith("application/json"), (target, content_type)


async def test_temporary_files_are_never_served(client: Client, upload_dir: Path) -> None:
    # An upload in progress: its first MiB is on disk under .incoming while the rest is awaited.
    host, port = client.server.host, client.server.port or 0
    _, writer = await asyncio.open_connection(host, port)
    try:
        headers = {**multipart_headers(), "Content-Length": str(64 * 1024 * 1024)}
        writer.write(request_head("POST", "/api/upload", headers, port=port))
        writer.write(part_head("a.jpg") + JPEG + bytes(3 * 1024 * 1024))
        await writer.drain()
        await eventually(lambda: bool(temp_files(upload_dir)))
        for temp in temp_files(upload_dir):
            relative = temp.relative_to(upload_dir).as_posix()
            for target in (
                f"/uploads/{relative}",
                f"/uploads/{relative.replace('.incoming', '%2eincoming')}",
                f"/uploads/{relative.replace('.incoming', '%2Eincoming')}",
                f"/uploads/sub/../{relative}",
            ):
                status, body, _ = await get_raw(client, target)
                assert status == 404, target
                assert JPEG not in body
        status, _, _ = await get_raw(client, "/uploads/.incoming/")
        assert status == 404
    finally:
        writer.close()


async def test_a_file_placed_by_hand_with_a_leading_dot_is_not_served(
    client: Client, upload_dir: Path
) -> None:
    (upload_dir / ".env").write_bytes(SECRET)
    status, body, _ = await get_raw(client, "/uploads/.env")
    assert status == 404
    assert SECRET not in body


async def test_missing_file_is_404_json(client: Client) -> None:
    await expect_error(await client.get("/uploads/never-uploaded.jpg"), 404)


# A GET with one of these headers takes aiohttp's FileResponse (the slow path): an If-None-Match
# that matches nothing changes nothing else.
SLOW_PATH = {"If-None-Match": '"matches-nothing"'}
SAME_ON_BOTH_PATHS = (
    "Content-Type",
    "Content-Length",
    "ETag",
    "Last-Modified",
    "Accept-Ranges",
    "X-Content-Type-Options",
)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.jpg", JPEG),
        ("b.PNG", PNG),
        ("c.webp", WEBP),
        ("no-extension", JPEG),
        ("d.tar.gz", PNG),
        ("e.unknown-type", PNG),
        ("empty.jpg", b""),
    ],
)
async def test_fast_and_slow_paths_answer_alike(
    client: Client, upload_dir: Path, name: str, data: bytes
) -> None:
    (upload_dir / name).write_bytes(data)  # placed by hand: the upload accepts only images
    fast = await client.get(f"/uploads/{name}")
    slow = await client.get(f"/uploads/{name}", headers=SLOW_PATH)
    assert (fast.status, slow.status) == (200, 200)
    assert await fast.read() == await slow.read() == data
    for header in SAME_ON_BOTH_PATHS:
        assert fast.headers.get(header) == slow.headers.get(header), header
    fast_head = await client.head(f"/uploads/{name}")
    slow_head = await client.head(f"/uploads/{name}", headers=SLOW_PATH)
    for header in SAME_ON_BOTH_PATHS:
        assert fast_head.headers.get(header) == slow_head.headers.get(header), header
    assert await fast_head.read() == b""


async def test_one_connection_serves_file_after_file(client: Client) -> None:
    # The body goes straight to the socket, around aiohttp's writer: the connection must stay
    # in step, with requests sent back to back (pipelined) as well as one by one.
    await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG))
    host, port = client.server.host, client.server.port or 0
    get_a = request_head("GET", "/uploads/a.jpg", port=port)
    get_b = request_head("GET", "/uploads/b.png", {"Range": "bytes=4-9"}, port=port)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request, body in ((get_a, JPEG), (get_b, PNG[4:10]), (get_a, JPEG)):
            writer.write(request)
            assert (await read_response(reader)).body == body
        writer.write(get_a + get_b + get_a)
        for body in (JPEG, PNG[4:10], JPEG):
            assert (await read_response(reader)).body == body
    finally:
        writer.close()


async def test_a_fifo_in_the_folder_is_refused_without_blocking(
    client: Client, upload_dir: Path
) -> None:
    # Opening a FIFO for reading waits for a writer: on the event loop, that would be forever.
    os.mkfifo(upload_dir / "pipe.jpg")
    for headers in ({}, SLOW_PATH):
        response = await asyncio.wait_for(client.get("/uploads/pipe.jpg", headers=headers), 5)
        await expect_error(response, 403)


async def test_precompressed_siblings_are_never_served(client: Client, upload_dir: Path) -> None:
    # aiohttp's FileResponse would answer a.jpg with a.jpg.gz for Accept-Encoding: gzip.
    await upload_ok(client, ("a.jpg", JPEG))
    (upload_dir / "a.jpg.gz").write_bytes(b"not the photo")
    for headers in ({}, SLOW_PATH):
        response = await client.get(
            "/uploads/a.jpg", headers={"Accept-Encoding": "gzip", **headers}, auto_decompress=False
        )
        assert await response.read() == JPEG
        assert "Content-Encoding" not in response.headers


CSP = "default-src 'none'; sandbox"
PAGE = b"<html><script>alert(document.cookie)</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.mark.parametrize("headers", [{}, SLOW_PATH], ids=["fast", "slow"])
async def test_files_that_are_not_checked_images_are_downloads_never_pages(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    # An operator who widens ALLOWED_EXTENSIONS must not turn /uploads into a script host.
    client = await make_client(allowed_extensions=frozenset({"jpg", "html", "svg"}))
    await upload_ok(client, ("page.html", PAGE), ("icon.svg", SVG), ("a.jpg", JPEG))
    for name, data in (("page.html", PAGE), ("icon.svg", SVG)):
        response = await client.get(f"/uploads/{name}", headers=headers)
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == "attachment"
        assert response.headers["Content-Security-Policy"] == CSP
    photo = await client.get("/uploads/a.jpg", headers=headers)
    assert photo.headers["Content-Type"] == "image/jpeg"
    assert "Content-Disposition" not in photo.headers
    assert photo.headers["Content-Security-Policy"] == CSP


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/uploads/missing.jpg", {}, 404),
        ("/uploads/a.jpg", {"If-None-Match": "*"}, 304),
        ("/uploads/a.jpg", {"Range": "bytes=4-9"}, 206),
        ("/uploads/.hidden.jpg", {}, 404),
    ],
)
async def test_every_stored_file_answer_carries_the_policy(
    client: Client, target: str, headers: dict[str, str], status: int
) -> None:
    await upload_ok(client, ("a.jpg", JPEG))
    response = await client.get(target, headers=headers)
    assert response.status == status
    assert response.headers["Content-Security-Policy"] == CSP


class ElsewhereStorage:
    """A reader whose bytes live at another URL, as an object store's would."""

    async def locate(self, name: str) -> StoredLocation | None:
        return Redirect(f"https://objects.example.com/bucket/{name}") if name != "x" else None


async def test_files_are_read_through_the_storage(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    app = create_app(make_settings(upload_dir))

    async def swap_reader(app: web.Application) -> None:
        app[FILE_READER] = ElsewhereStorage()

    app.on_startup.append(swap_reader)
    client = await aiohttp_client(app)
    await upload_ok(client, ("a.jpg", JPEG))  # on disk, yet this storage says it is elsewhere
    response = await client.get("/uploads/a.jpg", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "https://objects.example.com/bucket/a.jpg"
    await expect_error(await client.get("/uploads/x"), 404)
    # Elsewhere is a store others write to as well: only what the catalog records is served.
    await expect_error(await client.get("/uploads/b.jpg", allow_redirects=False), 404)


async def test_a_storage_without_reading_serves_nothing(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    app = create_app(make_settings(upload_dir))

    async def drop_reader(app: web.Application) -> None:
        del app[FILE_READER]

    app.on_startup.append(drop_reader)
    client = await aiohttp_client(app)
    (upload_dir / "a.jpg").write_bytes(JPEG)
    await expect_error(await client.get("/uploads/a.jpg"), 404)


# --------------------------------------------------------------------------- what is served


async def test_a_symlink_inside_the_folder_is_not_served(client: Client, upload_dir: Path) -> None:
    """Not even to a stored file: only regular files placed by uploads are served."""
    (upload_dir / "real.jpg").write_bytes(JPEG)
    os.symlink(upload_dir / "real.jpg", upload_dir / "alias.jpg")
    os.symlink("real.jpg", upload_dir / "relative.jpg")
    for target in ("/uploads/alias.jpg", "/uploads/relative.jpg"):
        for headers in ({}, {"Range": "bytes=0-3"}, {"If-None-Match": '"x"'}):
            response = await client.get(target, headers=headers)
            await expect_error(response, 404)


async def test_files_in_sub_folders_are_not_served(client: Client, upload_dir: Path) -> None:
    (upload_dir / "sub" / "deeper").mkdir(parents=True)
    (upload_dir / "sub" / "inner.jpg").write_bytes(JPEG)
    (upload_dir / "sub" / "deeper" / "deep.jpg").write_bytes(JPEG)
    for target in ("/uploads/sub/inner.jpg", "/uploads/sub/deeper/deep.jpg"):
        for headers in ({}, {"Range": "bytes=0-3"}):
            response = await client.get(target, headers=headers)
            await expect_error(response, 404)


async def test_a_failed_precondition_is_a_json_412(client: Client, upload_dir: Path) -> None:
    (upload_dir / "a.jpg").write_bytes(JPEG)
    response = await client.get("/uploads/a.jpg", headers={"If-Match": '"not-its-etag"'})
    assert await expect_error(response, 412) == "Precondition Failed"


@pytest.mark.parametrize("range_header", ["bytes=999999-", "bytes=abc", "bytes=5-2"])
async def test_an_unsatisfiable_range_is_a_json_416(
    client: Client, upload_dir: Path, range_header: str
) -> None:
    (upload_dir / "a.jpg").write_bytes(JPEG)
    response = await client.get("/uploads/a.jpg", headers={"Range": range_header})
    assert await expect_error(response, 416) == "Range Not Satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{len(JPEG)}"


async def test_if_range_with_another_etag_gets_the_whole_file(
    client: Client, upload_dir: Path
) -> None:
    (upload_dir / "a.jpg").write_bytes(JPEG)
    etag = (await client.get("/uploads/a.jpg")).headers["ETag"]
    stale = await client.get(
        "/uploads/a.jpg", headers={"Range": "bytes=0-3", "If-Range": '"an-older-version"'}
    )
    assert stale.status == 200
    assert await stale.read() == JPEG
    weak = await client.get(
        "/uploads/a.jpg", headers={"Range": "bytes=0-3", "If-Range": f"W/{etag}"}
    )
    assert weak.status == 200
    current = await client.get("/uploads/a.jpg", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert current.status == 206
    assert await current.read() == JPEG[:4]
