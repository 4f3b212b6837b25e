"""Storage quotas through a real server (SQLite and PostgreSQL): one byte under, at, and one
over; refused before the body when Content-Length tells; without Content-Length as the bytes
pass; uploads racing for the last bytes; nothing kept of a refused upload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, Client, stored_files, temp_files
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    chunked,
    expect_error,
    files_body,
    multipart_headers,
    part_head,
    read_head,
    read_response,
    request_head,
)


def jpeg(size: int) -> bytes:
    return JPEG + bytes(size - len(JPEG))


@pytest.fixture
async def keyed(make_client: MakeClient, database_url: str | None) -> Client:
    return await make_client(auth="keys", database_url=database_url)


async def quota_key(client: Client, name: str, quota: int) -> dict[str, str]:
    key, _ = await create_key(client.app[CATALOG], name, "upload,read", quota=quota)
    return {"Authorization": f"Bearer {key}"}


async def post(client: Client, headers: dict[str, str], *files: tuple[str, bytes]) -> int:
    response = await client.post(
        "/api/upload", data=files_body(*files), headers={**multipart_headers(), **headers}
    )
    await response.read()
    return response.status


async def test_one_byte_under_and_at_the_quota_pass_one_over_does_not(
    keyed: Client, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    under = await quota_key(keyed, "under", 5000)
    assert await post(keyed, under, ("a.jpg", jpeg(4999))) == 200
    at = await quota_key(keyed, "at", 5000)
    assert await post(keyed, at, ("a.jpg", jpeg(2000)), ("b.jpg", jpeg(3000))) == 200
    assert await post(keyed, at, ("c.jpg", jpeg(len(JPEG)))) == 507  # full now
    over = await quota_key(keyed, "over", 5000)
    response = await keyed.post(
        "/api/upload",
        data=files_body(("a.jpg", jpeg(5001))),
        headers={**multipart_headers(), **over},
    )
    detail = await expect_error(response, 507)
    assert detail.startswith("storage quota exceeded: owner 'over' may store 5000 bytes")
    assert len(stored_files(upload_dir)) == 3
    assert temp_files(upload_dir) == []
    assert "refused (quota_exceeded, 507): key over" in caplog.text
    assert await keyed.app[CATALOG].usage("over") == 0  # nor any reservation left
    metrics = await (await keyed.get("/metrics")).text()
    assert 'clustr_auth_refusals_total{reason="quota_exceeded"} 2.0' in metrics


async def test_without_content_length_the_counted_bytes_decide(keyed: Client) -> None:
    over = await quota_key(keyed, "chunky", 5000)
    body = files_body(("a.jpg", jpeg(5001)))
    head = request_head(
        "POST",
        "/api/upload",
        {**multipart_headers(), **over, "Transfer-Encoding": "chunked"},
        port=keyed.port or 0,
    )
    reader, writer = await asyncio.open_connection(keyed.host, keyed.port)
    try:
        writer.write(head + chunked(body, 1024))
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 507, response.body
    assert await keyed.app[CATALOG].usage("chunky") == 0


async def test_a_content_length_clearly_over_is_refused_before_the_body(keyed: Client) -> None:
    small = await quota_key(keyed, "small", 10_000)
    head = request_head(
        "POST",
        "/api/upload",
        {**multipart_headers(), **small, "Content-Length": "1000000", "Expect": "100-continue"},
        port=keyed.port or 0,
    )
    reader, writer = await asyncio.open_connection(keyed.host, keyed.port)
    try:
        writer.write(head + part_head("a.jpg"))
        response = await read_head(reader)  # no 100 Continue: the answer itself
    finally:
        writer.close()
    assert response.status == 507


async def test_uploads_racing_for_the_last_bytes_do_not_all_succeed(
    keyed: Client, upload_dir: Path
) -> None:
    size = 20_000
    racer = await quota_key(keyed, "racer", 2 * size + size // 2)  # room for two of five
    statuses = await asyncio.gather(
        *(post(keyed, racer, (f"{n}.jpg", jpeg(size))) for n in range(5))
    )
    assert sorted(statuses) == [200, 200, 507, 507, 507]
    assert len(stored_files(upload_dir)) == 2
    assert await keyed.app[CATALOG].usage("racer") == 2 * size


async def test_deleting_files_gives_the_room_back(keyed: Client) -> None:
    owner = await quota_key(keyed, "cleaner", 3000)
    response = await keyed.post(
        "/api/upload",
        data=files_body(("a.jpg", jpeg(3000))),
        headers={**multipart_headers(), **owner},
    )
    (item,) = (await response.json())["data"]
    assert await post(keyed, owner, ("b.jpg", jpeg(3000))) == 507
    admin, _ = await create_key(keyed.app[CATALOG], "root", "admin")
    deleted = await keyed.delete(
        f"/api/files/{item['id']}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert deleted.status == 204
    assert await post(keyed, owner, ("b.jpg", jpeg(3000))) == 200
