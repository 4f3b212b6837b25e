"""Thumbnails with STORAGE=s3: stored in the bucket (a real SeaweedFS), so that what one
instance rendered another serves without rendering it again. Two real servers (pytest-aiohttp)
with their own upload folders (their own thumbnail caches) share one bucket and one catalog,
as two machines would; the bucket is looked into with an independent client (boto3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clustr_aio.images.thumbnails import FAILED_TYPE
from clustr_aio.storage.s3 import S3Storage
from clustr_aio.web.keys import STORAGE
from tests.conftest import AiohttpClient, Client
from tests.http.helpers import expect_error, upload_ok
from tests.http.test_thumbnails import corrupt_png, local, rendered
from tests.images.photos import encode, picture
from tests.seaweedfs import SeaweedServer
from tests.storage.test_s3 import eventually_async, s3_client

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture
def bucket(seaweedfs_server: SeaweedServer) -> str:
    return seaweedfs_server.new_bucket()


async def instance(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    name: str,
    weed: SeaweedServer,
    bucket: str,
    **more: str,
) -> Client:
    """One of several instances: its own upload folder, the bucket and a catalog shared."""
    folder = tmp_path / name
    folder.mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    return await s3_client(aiohttp_client, folder, weed, bucket, DATABASE_URL=catalog, **more)


async def pair(
    aiohttp_client: AiohttpClient, tmp_path: Path, weed: SeaweedServer, bucket: str
) -> tuple[Client, Client]:
    a = await instance(aiohttp_client, tmp_path, "a", weed, bucket)
    return a, await instance(aiohttp_client, tmp_path, "b", weed, bucket)


def thumbnail_keys(weed: SeaweedServer, bucket: str) -> list[str]:
    return weed.keys(bucket, ".derived/")


async def test_one_instance_renders_the_other_serves_it_from_the_bucket(
    aiohttp_client: AiohttpClient, tmp_path: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    a, b = await pair(aiohttp_client, tmp_path, seaweedfs_server, bucket)
    [item] = await upload_ok(a, ("p.jpg", encode("jpg", picture((1200, 900)))))
    url = f"/api/files/{item['id']}/thumbnail"
    first = await a.get(url)
    assert first.status == 200
    body, etag = await first.read(), first.headers["ETag"]
    assert await rendered(a) == 1
    [key] = thumbnail_keys(seaweedfs_server, bucket)
    assert key == f".derived/p.jpg/thumbnails/256-{etag.strip(chr(34))}.webp"
    stored = seaweedfs_server.client().get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "image/webp"
    assert stored["CacheControl"] == IMMUTABLE

    second = await b.get(url)
    assert second.status == 200
    assert await second.read() == body
    assert second.headers["ETag"] == etag
    assert second.headers["Cache-Control"] == IMMUTABLE
    assert second.headers["Content-Type"] == "image/webp"
    assert await rendered(b) == 0  # B never rendered it: it came from the bucket
    assert (await b.get(url, headers={"If-None-Match": etag})).status == 304
    # The other size and another format: B renders those, and A then finds them.
    for query in ("?size=1024", "?format=jpeg"):
        assert (await b.get(url + query)).status == 200
        assert (await a.get(url + query)).status == 200
    assert await rendered(b) == 2
    assert await rendered(a) == 1
    assert len(thumbnail_keys(seaweedfs_server, bucket)) == 3
    # Nothing of the image stays on B's disk (the copies it rendered from are gone): only the
    # thumbnails it serves, as a cache.
    assert not [p for p in (tmp_path / "b").rglob(".sources/*") if p.is_file()]

    # Deleted through B: every object of the file goes, and A serves no thumbnail of it.
    assert (await b.delete(f"/api/files/{item['id']}")).status == 204
    assert seaweedfs_server.keys(bucket) == []
    await expect_error(await a.get(url), 404)


async def test_a_corrupt_image_is_rendered_once_for_every_instance(
    aiohttp_client: AiohttpClient, tmp_path: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    a, b = await pair(aiohttp_client, tmp_path, seaweedfs_server, bucket)
    [item] = await upload_ok(a, ("broken.png", corrupt_png()))
    url = f"/api/files/{item['id']}/thumbnail"
    detail = await expect_error(await a.get(url), 422)
    assert detail.startswith("the image cannot be rendered")
    [key] = thumbnail_keys(seaweedfs_server, bucket)
    head = seaweedfs_server.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == FAILED_TYPE
    for _ in range(3):
        assert await expect_error(await b.get(url), 422) == detail
    assert await rendered(a) == 1
    assert await rendered(b) == 0


async def test_instances_rendering_at_once_store_one_object(
    aiohttp_client: AiohttpClient, tmp_path: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    a, b = await pair(aiohttp_client, tmp_path, seaweedfs_server, bucket)
    [item] = await upload_ok(a, ("r.jpg", encode("jpg", picture((2400, 1800)))))
    url = f"/api/files/{item['id']}/thumbnail"
    answers = await asyncio.gather(*(client.get(url) for client in (a, b) for _ in range(10)))
    assert {answer.status for answer in answers} == {200}
    assert len({await answer.read() for answer in answers}) == 1
    assert len({answer.headers["ETag"] for answer in answers}) == 1
    assert 1 <= await rendered(a) + await rendered(b) <= 2  # once per instance at most
    assert len(thumbnail_keys(seaweedfs_server, bucket)) == 1


async def test_the_first_to_store_a_derived_file_wins(
    aiohttp_client: AiohttpClient, tmp_path: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    """The conditional write itself, against the store: a second put of one key is refused
    (If-None-Match: *) and leaves the first one's bytes."""
    a = await instance(aiohttp_client, tmp_path, "a", seaweedfs_server, bucket)
    storage = a.app[STORAGE]
    assert isinstance(storage, S3Storage)
    assert await storage.put_derived("x.jpg", "thumbnails/t.webp", b"first", "image/webp")
    assert not await storage.put_derived("x.jpg", "thumbnails/t.webp", b"second", "image/webp")
    found = await storage.get_derived("x.jpg", "thumbnails/t.webp")
    assert found is not None
    assert (found.data, found.content_type) == (b"first", "image/webp")
    assert await storage.get_derived("x.jpg", "thumbnails/none.webp") is None


async def test_eager_thumbnails_are_rendered_into_the_bucket(
    aiohttp_client: AiohttpClient, tmp_path: Path, seaweedfs_server: SeaweedServer, bucket: str
) -> None:
    a = await instance(aiohttp_client, tmp_path, "a", seaweedfs_server, bucket, THUMBNAILS="eager")
    b = await instance(aiohttp_client, tmp_path, "b", seaweedfs_server, bucket)
    [item] = await upload_ok(a, ("e.jpg", encode("jpg", picture((1600, 1200)))))
    await eventually_async(lambda: len(thumbnail_keys(seaweedfs_server, bucket)) == 2)
    assert await rendered(a) == 2
    for url in item["thumbnails"].values():
        assert (await b.get(local(url))).status == 200
    assert await rendered(b) == 0
    # The copy of the image fetched to render from is gone.
    assert not [p for p in (tmp_path / "a").rglob(".sources/*") if p.is_file()]
