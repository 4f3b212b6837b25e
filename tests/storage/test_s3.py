"""STORAGE=s3 through a real server (pytest-aiohttp) against a real SeaweedFS (tests/seaweedfs.py),
checked with an independent client (boto3): what is in the bucket, not what the server says."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yarl

from clustr_aio.storage.s3 import S3Storage
from clustr_aio.storage.s3 import storage as s3_storage
from clustr_aio.storage.s3.client import S3Config
from clustr_aio.web.app import create_app
from tests.conftest import PNG, AiohttpClient, Client, make_settings
from tests.http.helpers import (
    BOUNDARY,
    Part,
    error_body,
    multipart_body,
    part_head,
    post_body,
    upload,
    upload_ok,
)
from tests.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedServer

MiB = 1024 * 1024
PART = 5 * MiB


def big_png(size: int) -> bytes:
    return PNG + os.urandom(size - len(PNG))


@pytest.fixture
def bucket(seaweedfs_server: SeaweedServer) -> str:
    return seaweedfs_server.new_bucket()


async def s3_client(
    aiohttp_client: AiohttpClient, upload_dir: Path, weed: SeaweedServer, bucket: str, **more: str
) -> Client:
    settings = make_settings(
        upload_dir, **_attributes(weed.settings(bucket, S3_PART_SIZE="5MiB", **more))
    )
    return await aiohttp_client(create_app(settings))


def _attributes(env: dict[str, str]) -> dict[str, Any]:
    from clustr_aio.settings import load_settings

    parsed = load_settings(environ=env, config_file=Path(os.devnull), env_file=Path(os.devnull))
    return {name.lower(): getattr(parsed, name.lower()) for name in env}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, upload_dir: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> Client:
    return await s3_client(aiohttp_client, upload_dir, seaweedfs_server, bucket)


def object_bytes(weed: SeaweedServer, bucket: str, key: str) -> bytes:
    return weed.client().get_object(Bucket=bucket, Key=key)["Body"].read()


async def follow(client: Client, name: str) -> bytes:
    """GET /uploads/name: a 302 to a presigned URL, fetched from the store itself."""
    response = await client.get(f"/uploads/{name}", allow_redirects=False)
    assert response.status == 302, await response.text()
    location = response.headers["Location"]
    async with client.session.get(yarl.URL(location, encoded=True)) as stored:
        assert stored.status == 200, await stored.text()
        return await stored.read()


async def test_small_and_large_files_are_stored_whole_and_served(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    small, large = PNG, big_png(2 * PART + 12345)  # one PUT; three parts
    items = await upload_ok(client, ("small.png", small), ("large.png", large))
    assert [i["stored_filename"] for i in items] == ["small.png", "large.png"]
    assert seaweedfs_server.keys(bucket) == ["large.png", "small.png"]
    assert object_bytes(seaweedfs_server, bucket, "large.png") == large
    assert items[1]["sha256"] == hashlib.sha256(large).hexdigest()
    assert seaweedfs_server.uploads(bucket) == []  # every multipart upload completed
    assert await follow(client, "small.png") == small
    assert await follow(client, "large.png") == large
    head = weed_head(seaweedfs_server, bucket, "large.png")
    assert head["ContentType"] == "image/png"
    assert "clustr-pending" not in head["Metadata"]  # the placeholder was replaced


async def test_keys_from_the_aws_chain_sign_small_puts_and_parts_alike(
    aiohttp_client: AiohttpClient,
    upload_dir: Path,
    seaweedfs_server: SeaweedServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No S3_ACCESS_KEY_ID: the standard chain's keys (here AWS_* variables), found once by
    the botocore client, also sign the small PUTs sent outside it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = seaweedfs_server.settings(bucket, S3_PART_SIZE="5MiB")
    del settings["S3_ACCESS_KEY_ID"], settings["S3_SECRET_ACCESS_KEY"]
    client = await aiohttp_client(create_app(make_settings(upload_dir, **_attributes(settings))))
    large = big_png(PART + 1)
    await upload_ok(client, ("small.png", PNG), ("large.png", large))
    assert object_bytes(seaweedfs_server, bucket, "small.png") == PNG
    assert object_bytes(seaweedfs_server, bucket, "large.png") == large


def weed_head(weed: SeaweedServer, bucket: str, key: str) -> dict[str, Any]:
    return dict(weed.client().head_object(Bucket=bucket, Key=key))


async def test_a_taken_name_gets_the_next_number_small_or_large(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    first = await upload_ok(client, ("p.png", PNG))
    second = await upload_ok(client, ("p.png", big_png(PART + 1)))
    third = await upload_ok(client, ("p.png", PNG + b"3"))
    names = [items[0]["stored_filename"] for items in (first, second, third)]
    assert names == ["p.png", "p-1.png", "p-2.png"]
    assert object_bytes(seaweedfs_server, bucket, "p.png") == PNG  # never overwritten


async def test_names_taken_by_another_writer_are_skipped(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    """Objects this process never wrote (another instance's) are never overwritten."""
    other = seaweedfs_server.client()
    for key in ("q.png", "q-1.png", "q-2.png"):
        other.put_object(Bucket=bucket, Key=key, Body=b"someone else's")
    items = await upload_ok(client, ("q.png", PNG), ("q.png", big_png(PART + 7)))
    assert [i["stored_filename"] for i in items] == ["q-3.png", "q-4.png"]
    assert object_bytes(seaweedfs_server, bucket, "q.png") == b"someone else's"


async def test_a_refused_batch_leaves_no_object_and_no_multipart_upload(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    body = multipart_body(
        Part(PNG, "ok.png"), Part(big_png(2 * PART + 3), "big.png"), Part(b"not a png", "bad.png")
    )
    response = await post_body(client, body)
    assert (await error_body(response, 415))["file"] == "bad.png"
    assert seaweedfs_server.keys(bucket) == []
    assert seaweedfs_server.uploads(bucket) == []


async def test_refused_files_and_duplicates_of_a_kept_batch_leave_no_object(
    aiohttp_client: AiohttpClient, upload_dir: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    """atomic=false and DEDUPE=reuse: the objects written for the files left out (a small
    duplicate, a large refused one) are removed; the others are stored and served."""
    client = await s3_client(aiohttp_client, upload_dir, seaweedfs_server, bucket, DEDUPE="reuse")
    [stored] = await upload_ok(client, ("a.png", PNG))
    body = multipart_body(
        Part(PNG, "again.png"), Part(big_png(PART + 3), "new.png"), Part(b"not a png", "bad.png")
    )
    response = await post_body(client, body, query="?atomic=false")
    items = (await response.json())["data"]
    assert response.status == 200, items
    assert items[0] == {**stored, "duplicate": True}
    assert items[1]["stored_filename"] == "new.png"
    assert items[2]["error"]["status"] == 415
    assert seaweedfs_server.keys(bucket) == ["a.png", "new.png"]
    assert seaweedfs_server.uploads(bucket) == []


async def test_a_file_over_the_limit_mid_multipart_is_aborted(
    aiohttp_client: AiohttpClient, upload_dir: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    client = await s3_client(
        aiohttp_client, upload_dir, seaweedfs_server, bucket, MAX_FILE_SIZE="12MiB"
    )
    response = await upload(client, ("huge.png", big_png(13 * MiB)))
    await error_body(response, 413)
    assert seaweedfs_server.keys(bucket) == []
    assert seaweedfs_server.uploads(bucket) == []


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    server = client.server
    data = big_png(3 * PART)
    head = multipart_body(Part(PNG, "first.png"), closed=False) + part_head("cut.png")
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
        + f"Content-Length: {len(head) + len(data) + 100}\r\n\r\n".encode()
        + head
        + data[: 2 * PART + 1000]
    )
    await writer.drain()

    def writing() -> bool:
        return bool(seaweedfs_server.uploads(bucket))

    await eventually_async(writing)  # the multipart upload has begun
    writer.close()
    await eventually_async(
        lambda: not seaweedfs_server.keys(bucket) and not seaweedfs_server.uploads(bucket)
    )


async def eventually_async(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_an_object_without_a_record_is_not_served(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    """An upload in flight (or a crashed one's) is in the bucket, not in the catalog."""
    seaweedfs_server.client().put_object(Bucket=bucket, Key="pending.png", Body=PNG)
    response = await client.get("/uploads/pending.png", allow_redirects=False)
    assert (await error_body(response, 404))["detail"] == "Not Found"
    assert (await client.get("/uploads/.ready", allow_redirects=False)).status == 404


async def test_delete_removes_the_object_and_what_was_derived_from_it(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    [item] = await upload_ok(client, ("d.png", PNG))
    keep = await upload_ok(client, ("dd.png", PNG))
    storage = client.app[__import__("clustr_aio.web.keys").web.keys.STORAGE]
    assert isinstance(storage, S3Storage)
    await storage.put_derived("d.png", "320.webp", b"thumb", "image/webp")
    await storage.put_derived("dd.png", "320.webp", b"thumb", "image/webp")
    assert ".derived/d.png/320.webp" in seaweedfs_server.keys(bucket)
    assert (await client.delete(f"/api/files/{item['id']}")).status == 204
    assert seaweedfs_server.keys(bucket) == [".derived/dd.png/320.webp", "dd.png"]
    assert (await client.get("/uploads/d.png", allow_redirects=False)).status == 404
    assert keep[0]["stored_filename"] == "dd.png"


async def test_a_bulk_delete_removes_every_object_and_what_was_derived_from_each(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    items = await upload_ok(client, *[(f"{n}.png", PNG) for n in range(20)])
    storage = client.app[__import__("clustr_aio.web.keys").web.keys.STORAGE]
    assert isinstance(storage, S3Storage)
    for item in items:
        await storage.put_derived(item["stored_filename"], "320.webp", b"thumb", "image/webp")
    doomed = items[:-1]
    response = await client.post("/api/files/delete", json={"ids": [i["id"] for i in doomed]})
    assert (await response.json())["missing"] == []
    assert seaweedfs_server.keys(bucket) == [".derived/19.png/320.webp", "19.png"]


async def test_proxy_mode_streams_with_ranges_and_preconditions(
    aiohttp_client: AiohttpClient, upload_dir: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    client = await s3_client(aiohttp_client, upload_dir, seaweedfs_server, bucket, S3_SERVE="proxy")
    data = big_png(PART + 99)
    await upload_ok(client, ("v.png", data))
    whole = await client.get("/uploads/v.png")
    assert whole.status == 200
    assert await whole.read() == data
    assert whole.headers["Content-Type"] == "image/png"
    assert whole.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    etag = whole.headers["ETag"]
    part = await client.get("/uploads/v.png", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert await part.read() == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    same = await client.get("/uploads/v.png", headers={"If-None-Match": etag})
    assert same.status == 304
    stale = await client.get("/uploads/v.png", headers={"Range": "bytes=0-0", "If-Range": '"x"'})
    assert stale.status == 200
    assert len(await stale.read()) == len(data)
    await error_body(await client.get("/uploads/v.png", headers={"If-Match": '"x"'}), 412)
    far = await client.get("/uploads/v.png", headers={"Range": f"bytes={len(data) + 5}-"})
    await error_body(far, 416)
    head = await client.head("/uploads/v.png")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    await error_body(await client.get("/uploads/none.png"), 404)


async def test_presigned_urls_are_checked_by_the_store(
    seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    """A redirect's URL works as given; a forged signature or an expired one is refused by
    SeaweedFS itself (moto would accept both)."""
    seaweedfs_server.client().put_object(Bucket=bucket, Key="s.png", Body=PNG)
    config = S3Config(
        bucket=bucket,
        endpoint_url=seaweedfs_server.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        presigned_seconds=5,
    )
    storage = S3Storage(config)
    await storage.open()
    try:
        url = await storage.presigned_url("s.png")
        signed_at = time.monotonic()
        forged_storage = S3Storage(
            S3Config(
                bucket=bucket,
                endpoint_url=seaweedfs_server.endpoint,
                access_key_id=ACCESS_KEY,
                secret_access_key="not-the-secret",
            )
        )
        await forged_storage.open()
        forged = await forged_storage.presigned_url("s.png")
        await forged_storage.close()
    finally:
        await storage.close()
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def get(target: str) -> tuple[int, bytes]:
            async with session.get(yarl.URL(target, encoded=True)) as answer:
                return answer.status, await answer.read()

        assert await get(url) == (200, PNG)
        tampered = url.replace("s.png", "t.png")
        assert (await get(tampered))[0] == 403
        status, body = await get(forged)
        assert status == 403
        assert b"SignatureDoesNotMatch" in body
        # X-Amz-Date has whole seconds: past 5 s for sure, whatever the load.
        await asyncio.sleep(max(0.0, 6.5 - (time.monotonic() - signed_at)))
        status, body = await get(url)
        assert status == 403
        assert b"expired" in body


async def test_an_unreachable_store_is_503_and_not_ready(
    aiohttp_client: AiohttpClient, upload_dir: Path, bucket: str
) -> None:
    dead = SeaweedServer()  # never started: nothing listens on its port
    try:
        client = await s3_client(aiohttp_client, upload_dir, dead, bucket)
        response = await upload(client, ("a.png", PNG))
        body = await error_body(response, 503)
        assert response.headers["Retry-After"] == "5"
        assert "try again" in body["detail"]
        ready = await client.get("/readyz")
        assert "bucket is not writable" in (await error_body(ready, 503))["detail"]
    finally:
        dead.close()


async def test_orphans_older_than_the_grace_are_swept_recorded_files_never(
    aiohttp_client: AiohttpClient, upload_dir: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    client = await s3_client(
        aiohttp_client, upload_dir, seaweedfs_server, bucket, S3_ORPHAN_GRACE="1"
    )
    await upload_ok(client, ("kept.png", PNG))
    other = seaweedfs_server.client()
    other.put_object(Bucket=bucket, Key="orphan.png", Body=PNG)  # a crash before the commit
    other.put_object(Bucket=bucket, Key=".derived/orphan.png/320.webp", Body=b"t")
    # A thumbnail stored while another instance deleted its file: no file, no record.
    other.put_object(Bucket=bucket, Key=".derived/deleted.png/thumbnails/256-x.webp", Body=b"t")
    other.create_multipart_upload(Bucket=bucket, Key="half.png")  # a crash mid-upload
    await eventually_async(
        lambda: (
            seaweedfs_server.keys(bucket) == ["kept.png"] and seaweedfs_server.uploads(bucket) == []
        )
    )


async def test_the_sweep_walks_the_bucket_a_chunk_at_a_time(
    aiohttp_client: AiohttpClient,
    upload_dir: Path,
    seaweedfs_server: SeaweedServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks of 2 names (1,000 in production), deleting as the listing goes on: every orphan
    and orphaned thumbnail goes, whichever chunk it falls in, and no recorded file does."""
    monkeypatch.setattr(s3_storage, "_SWEEP_CHUNK", 2)
    client = await s3_client(
        aiohttp_client, upload_dir, seaweedfs_server, bucket, S3_ORPHAN_GRACE="1"
    )
    kept = [
        item["stored_filename"]
        for item in await upload_ok(client, *[(f"k{n}.png", PNG) for n in range(3)])
    ]
    other = seaweedfs_server.client()
    for n in range(5):
        other.put_object(Bucket=bucket, Key=f"o{n}.png", Body=PNG)
        other.put_object(Bucket=bucket, Key=f".derived/o{n}.png/320.webp", Body=b"t")
        other.put_object(Bucket=bucket, Key=f".derived/gone{n}.png/256.webp", Body=b"t")
    await eventually_async(lambda: seaweedfs_server.keys(bucket) == sorted(kept))


async def test_images_whose_header_is_patched_stream_and_decode(
    client: Client, seaweedfs_server: SeaweedServer, bucket: str, tmp_path: Path
) -> None:
    """Stripping a WebP's EXIF changes its RIFF size, known only at the end: the writer patches
    the header (HeadPatching), of a small file's bytes or of a large one's first part, held back
    for it, so no image is held whole in memory."""
    from PIL import Image

    from tests.images.photos import phone_photo

    small = phone_photo(tmp_path, "webp")
    # Large: the same photo with a big unknown chunk after it (kept), past several parts.
    filler = os.urandom(2 * PART + 777)
    chunk = b"ZZZZ" + len(filler).to_bytes(4, "little") + filler + b"\0" * (len(filler) % 2)
    body = small[12:] + chunk
    large = b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body
    items = await upload_ok(client, ("s.webp", small), ("l.webp", large))
    for item, sent in zip(items, (small, large), strict=True):
        stored = object_bytes(seaweedfs_server, bucket, item["stored_filename"])
        assert len(sent) > len(stored) == item["file_size"]  # metadata went: a patch was due
        assert int.from_bytes(stored[4:8], "little") == len(stored) - 8  # the patched size
        with Image.open(io.BytesIO(stored)) as image:
            image.load()
            assert image.size == (64, 48)
    assert seaweedfs_server.uploads(bucket) == []
