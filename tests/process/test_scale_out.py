"""Stateless scale-out: two server processes sharing one bucket (a real SeaweedFS) and one
catalog (a real PostgreSQL), as two machines behind a load balancer would."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PNG
from tests.http.helpers import BOUNDARY, files_body, multipart_headers, part_head
from tests.postgres import PostgresServer
from tests.process.conftest import StartServer
from tests.process.slow_client import SlowUpload, jpeg_bytes
from tests.seaweedfs import SeaweedServer
from tests.server_process import RunningServer, wait_until

MiB = 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_plain = urllib.request.build_opener(_NoRedirect)


def request(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    prepared = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _plain.open(prepared, timeout=120) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post(server: RunningServer, *files: tuple[str, bytes]) -> tuple[int, Any]:
    status, _, body = request(
        server.url + "/api/upload", method="POST", data=files_body(*files),
        headers=multipart_headers(),
    )  # fmt: skip
    return status, json.loads(body)


def fetch(server: RunningServer, name: str) -> bytes | None:
    """GET /uploads/name through ``server``, then its presigned URL from the store; None: 404."""
    status, headers, body = request(f"{server.url}/uploads/{name}")
    if status == 404:
        return None
    assert status == 302, body
    stored_status, _, stored = request(headers["Location"])
    assert stored_status == 200
    return stored


def listed(server: RunningServer) -> list[dict[str, Any]]:
    status, _, body = request(f"{server.url}/api/files?limit=1000")
    assert status == 200
    items: list[dict[str, Any]] = json.loads(body)["data"]
    return items


def etag_of(headers: dict[str, str]) -> str:
    [etag] = [value for name, value in headers.items() if name.lower() == "etag"]
    return etag


def rendered(server: RunningServer) -> float:
    """``clustr_thumbnails_rendered_total`` of ``server``'s /metrics."""
    _, _, body = request(f"{server.url}/metrics")
    found = re.search(rb"^clustr_thumbnails_rendered_total (\S+)$", body, re.M)
    assert found is not None, body[-2000:]
    return float(found.group(1))


@pytest.fixture
async def database(postgres_server: PostgresServer) -> str:
    return await postgres_server.new_database()


def shared_env(weed: SeaweedServer, bucket: str, database: str, **more: str) -> dict[str, str]:
    return weed.settings(bucket, DATABASE_URL=database, S3_PART_SIZE="5MiB", **more)


def start_pair(
    server_factory: StartServer, tmp_path: Path, env: dict[str, str], **b_more: str
) -> tuple[RunningServer, RunningServer]:
    a = server_factory(env, directory=tmp_path / "a")
    b = server_factory(env | b_more, directory=tmp_path / "b")
    return a, b


def test_upload_through_one_list_fetch_and_delete_through_the_other(
    server_factory: StartServer, tmp_path: Path, seaweedfs_server: SeaweedServer, database: str
) -> None:
    bucket = seaweedfs_server.new_bucket()
    a, b = start_pair(server_factory, tmp_path, shared_env(seaweedfs_server, bucket, database))
    large = PNG + os.urandom(6 * MiB)
    status, body = post(a, ("one.png", PNG), ("two.png", large))
    assert status == 200, body
    assert sorted(i["stored_filename"] for i in listed(b)) == ["one.png", "two.png"]
    assert fetch(b, "two.png") == large
    assert fetch(b, "one.png") == PNG
    one = next(i for i in body["data"] if i["stored_filename"] == "one.png")
    status, headers, thumb = request(f"{b.url}/api/files/{one['id']}/thumbnail?format=webp")
    assert status == 200, thumb
    assert headers["Content-Type"] == "image/webp"
    assert thumb[:4] == b"RIFF"
    assert thumb[8:12] == b"WEBP"
    # Rendered from a copy fetched from the bucket, which is gone once the thumbnail is made.
    assert not [p for p in b.upload_folder.rglob(".sources/*") if p.is_file()]
    # Stored in the bucket: the other instance serves it without rendering it again.
    status, a_headers, a_thumb = request(f"{a.url}/api/files/{one['id']}/thumbnail?format=webp")
    assert (status, a_thumb) == (200, thumb)
    assert etag_of(a_headers) == etag_of(headers)
    assert rendered(b) == 1
    assert rendered(a) == 0
    two = next(i for i in body["data"] if i["stored_filename"] == "two.png")
    assert request(f"{b.url}/api/files/{two['id']}", method="DELETE")[0] == 204
    assert fetch(a, "two.png") is None
    etag = etag_of(headers).strip('"')
    assert seaweedfs_server.keys(bucket) == [
        f".derived/one.png/thumbnails/256-{etag}.webp",
        "one.png",
    ]
    # A thumbnail cached by one instance is not served once another deleted its file, and
    # every object of the file is gone.
    thumbnail = f"/api/files/{one['id']}/thumbnail?format=webp"
    assert request(a.url + thumbnail)[0] == 200
    assert request(f"{b.url}/api/files/{one['id']}", method="DELETE")[0] == 204
    assert request(a.url + thumbnail)[0] == 404
    assert seaweedfs_server.keys(bucket) == []
    # Neither instance keeps anything of the files on its disk.
    assert not [p for p in a.upload_folder.rglob("*") if p.is_file() and "png" in p.name]


def test_concurrent_uploads_of_one_name_over_both_instances_are_distinct_and_whole(
    server_factory: StartServer, tmp_path: Path, seaweedfs_server: SeaweedServer, database: str
) -> None:
    bucket = seaweedfs_server.new_bucket()
    servers = start_pair(server_factory, tmp_path, shared_env(seaweedfs_server, bucket, database))
    contents = [jpeg_bytes(20_000) for _ in range(200)]

    def upload(n: int) -> dict[str, Any]:
        status, body = post(servers[n % 2], ("same.jpg", contents[n]))
        assert status == 200, body
        item: dict[str, Any] = body["data"][0]
        return item

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        items = list(pool.map(upload, range(200)))
    print(f"200 uploads of one name over two instances: {time.monotonic() - started:.1f}s")
    names = [i["stored_filename"] for i in items]
    assert len(set(names)) == 200
    assert set(seaweedfs_server.keys(bucket)) == set(names)
    client = seaweedfs_server.client()
    for n, item in enumerate(items):
        stored = client.get_object(Bucket=bucket, Key=item["stored_filename"])["Body"].read()
        assert stored == contents[n]  # each object holds its own upload's bytes, whole
        assert item["sha256"] == hashlib.sha256(stored).hexdigest()
    assert len(listed(servers[1])) == 200


def test_kill_9_mid_batch_leaves_nothing_served_and_the_other_keeps_serving(
    server_factory: StartServer, tmp_path: Path, seaweedfs_server: SeaweedServer, database: str
) -> None:
    bucket = seaweedfs_server.new_bucket()
    env = shared_env(seaweedfs_server, bucket, database)
    a, b = start_pair(server_factory, tmp_path, env, S3_ORPHAN_GRACE="2")
    files = [(f"batch-{n}.png", PNG + bytes([n])) for n in range(5)]
    body = b"".join(part_head(name) + data + b"\r\n" for name, data in files)
    large_head = part_head("batch-large.png")
    with socket.create_connection(("127.0.0.1", a.port)) as sock:
        sock.sendall(
            f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 20 * MiB}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
            + body + large_head + PNG + os.urandom(6 * MiB)
        )  # fmt: skip
        # Small files stored, a large one's multipart upload under way: then the process dies.
        wait_until(lambda: bool(seaweedfs_server.uploads(bucket)), "a multipart upload")
        os.kill(a.pid, signal.SIGKILL)
        a.process.wait(timeout=10)
    assert seaweedfs_server.keys(bucket)  # what a dead process could not take back…
    assert listed(b) == []  # …is in no record,
    for name, _ in files:
        assert fetch(b, name) is None  # and served by no one.
    status, answer = post(b, ("after.png", PNG))  # the other instance keeps serving
    assert status == 200, answer
    assert fetch(b, "after.png") == PNG
    # Its sweep removes the dead one's objects and multipart upload once past the grace.
    wait_until(
        lambda: (
            seaweedfs_server.keys(bucket) == ["after.png"] and not seaweedfs_server.uploads(bucket)
        ),
        "the orphans to be swept",
    )


def test_the_store_stopped_mid_upload_is_a_503_then_recovery(
    server_factory: StartServer, tmp_path: Path, database: str
) -> None:
    weed = SeaweedServer()
    try:
        weed.start()
        bucket = weed.new_bucket()
        server = server_factory(
            shared_env(weed, bucket, database, S3_ORPHAN_GRACE="3"), directory=tmp_path / "s"
        )
        upload = SlowUpload(
            server.port, "cut.jpg", jpeg_bytes(16 * MiB), burst=6 * MiB, chunk=256 * 1024,
            delay=0.05,
        ).start()  # fmt: skip
        wait_until(lambda: bool(weed.uploads(bucket)), "a multipart upload")
        weed.stop()
        outcome = upload.outcome()
        assert outcome.status == 503, outcome
        assert outcome.headers is not None
        assert outcome.headers["retry-after"] == "5"
        assert "try again" in outcome.json()["detail"]
        assert request(server.url + "/readyz")[0] == 503
        assert listed(server) == []
        weed.start()
        wait_until(lambda: request(server.url + "/readyz")[0] == 200, "ready again")
        # What the store could not be told to remove while it was down, the sweep removes.
        wait_until(lambda: not weed.keys(bucket) and not weed.uploads(bucket), "nothing left")
        status, body = post(server, ("back.png", PNG))
        assert status == 200, body
        assert fetch(server, "back.png") == PNG
    finally:
        weed.close()
