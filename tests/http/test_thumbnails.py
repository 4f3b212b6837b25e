"""``GET /api/files/{id}/thumbnail`` through the real server, with libvips really rendering:
sizes, formats and Accept, ETag/304, single-flight counted by /metrics, the cached 422 of a
corrupt image, a full queue's 503, THUMBNAILS=eager, and thumbnails gone with their file;
the items' links and dimensions in both catalogs."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from yarl import URL

from clustr_aio.catalog.ids import new_id
from clustr_aio.images import thumbnails
from clustr_aio.web.keys import SETTINGS
from tests.conftest import Client
from tests.http.conftest import MakeClient
from tests.http.helpers import eventually, expect_error, upload_ok
from tests.images.photos import encode, phone_photo, picture, png_chunk

IMMUTABLE = "public, max-age=31536000, immutable"


def corrupt_png() -> bytes:
    """Whole in structure (every chunk's CRC right, IHDR to IEND), but its IDAT is no zlib
    stream: the upload's check passes it, libvips cannot decode it."""
    ihdr = (300).to_bytes(4, "big") + (200).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"not a zlib stream " * 20)
        + png_chunk(b"IEND", b"")
    )


async def rendered(client: Client) -> float:
    """``thumbnails_rendered_total`` as /metrics says."""
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith("clustr_thumbnails_rendered_total "):
            return float(line.split()[1])
    raise AssertionError("no thumbnails_rendered_total in /metrics")


def decoded(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


async def upload_one(client: Client, name: str, data: bytes) -> dict[str, Any]:
    [item] = await upload_ok(client, (name, data))
    return item


def thumbnail_path(item: dict[str, Any]) -> str:
    return f"/api/files/{item['id']}/thumbnail"


def local(url: str) -> str:
    """An item's absolute URL (the server's configured address) as a path for the test's
    client (which reaches it on another port)."""
    return str(URL(url).relative())


async def test_sizes_from_thumbnail_sizes_longest_side_never_upscaled(
    client: Client,
) -> None:
    big = await upload_one(client, "wide.jpg", encode("jpg", picture((1600, 900))))
    small = await upload_one(client, "small.png", encode("png", picture((40, 30))))
    response = await client.get(thumbnail_path(big))  # the first size, WebP
    assert response.status == 200
    assert response.content_type == "image/webp"
    assert decoded(await response.read()).size == (256, 144)
    response = await client.get(thumbnail_path(big), params={"size": "1024"})
    assert decoded(await response.read()).size == (1024, 576)
    response = await client.get(thumbnail_path(small), params={"size": "1024"})
    assert decoded(await response.read()).size == (40, 30)  # never larger than the image
    for size in ("300", "0", "-1", "256px", "1e3"):
        detail = await expect_error(
            await client.get(thumbnail_path(big), params={"size": size}), 400
        )
        assert detail == f"size: expected one of 256, 1024 (THUMBNAIL_SIZES), got {size!r}"


async def test_other_sizes_when_thumbnail_sizes_says_so(make_client: MakeClient) -> None:
    client = await make_client(thumbnail_sizes=(100, 640))
    item = await upload_one(client, "p.jpg", encode("jpg", picture((800, 600))))
    assert item["thumbnails"] == {
        size: f"{item['thumbnail_url']}?size={size}" for size in ("100", "640")
    }
    assert decoded(await (await client.get(local(item["thumbnail_url"]))).read()).size == (100, 75)
    assert (await client.get(thumbnail_path(item), params={"size": "256"})).status == 400


@pytest.mark.parametrize(
    ("query", "accept", "content_type", "pillow_format"),
    [
        ({}, None, "image/webp", "WEBP"),
        ({"format": "webp"}, None, "image/webp", "WEBP"),
        ({"format": "jpeg"}, None, "image/jpeg", "JPEG"),
        ({"format": "avif"}, None, "image/avif", "AVIF"),
        ({}, "image/avif,image/webp,image/apng,image/*,*/*;q=0.8", "image/webp", "WEBP"),
        ({}, "image/avif,image/webp;q=0.5", "image/avif", "AVIF"),
        ({}, "image/jpeg", "image/jpeg", "JPEG"),
        ({}, "image/png", "image/webp", "WEBP"),  # none of ours: the default
        ({"format": "jpeg"}, "image/avif", "image/jpeg", "JPEG"),  # format wins
    ],
)
async def test_formats_by_format_else_accept(
    client: Client,
    query: dict[str, str],
    accept: str | None,
    content_type: str,
    pillow_format: str,
) -> None:
    item = await upload_one(client, "p.jpg", encode("jpg", picture((640, 480))))
    headers = {"Accept": accept} if accept else {}
    response = await client.get(thumbnail_path(item), params=query, headers=headers)
    assert response.status == 200
    assert response.content_type == content_type
    image = decoded(await response.read())
    assert image.format == pillow_format
    assert image.size == (256, 192)
    varies = "Accept" in response.headers.getall("Vary", [])
    assert varies == ("format" not in query)  # for a cache: the answer follows Accept
    detail = await expect_error(
        await client.get(thumbnail_path(item), params={"format": "png"}), 400
    )
    assert detail == "format: expected one of webp, avif, jpeg, got 'png'"


async def test_a_strong_etag_immutable_and_304(client: Client) -> None:
    item = await upload_one(client, "p.jpg", encode("jpg", picture((640, 480))))
    first = await client.get(thumbnail_path(item))
    body = await first.read()
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    assert not etag.startswith("W/")
    assert first.headers["Cache-Control"] == IMMUTABLE
    assert first.headers["Content-Length"] == str(len(body))
    again = await client.get(thumbnail_path(item))
    assert again.headers["ETag"] == etag
    assert await again.read() == body
    for if_none_match in (etag, f'"other", {etag}', f"W/{etag}"):
        not_modified = await client.get(
            thumbnail_path(item), headers={"If-None-Match": if_none_match}
        )
        assert not_modified.status == 304
        assert not_modified.headers["ETag"] == etag
        assert not_modified.headers["Cache-Control"] == IMMUTABLE
        assert await not_modified.read() == b""
    other = await client.get(thumbnail_path(item), headers={"If-None-Match": '"other"'})
    assert other.status == 200
    # Another size or format is another ETag.
    jpeg = await client.get(thumbnail_path(item), params={"format": "jpeg"})
    assert jpeg.headers["ETag"] != etag
    assert await rendered(client) == 2


async def test_a_rotated_phone_photo_is_upright(client: Client, tmp_path: Path) -> None:
    photo = phone_photo(tmp_path, "jpg", orientation=6, size=(640, 480))
    item = await upload_one(client, "phone.jpg", photo)
    assert (item["width"], item["height"], item["orientation"]) == (480, 640, 6)
    image = decoded(await (await client.get(thumbnail_path(item))).read())
    assert image.size == (192, 256)  # portrait, as displayed
    assert not image.getexif()  # upright pixels, so no orientation to apply


async def test_a_hundred_concurrent_first_requests_render_once(client: Client) -> None:
    item = await upload_one(client, "p.jpg", encode("jpg", picture((2000, 1500))))
    responses = await asyncio.gather(*(client.get(thumbnail_path(item)) for _ in range(100)))
    bodies = {await response.read() for response in responses}
    assert [r.status for r in responses] == [200] * 100
    assert len(bodies) == 1
    assert await rendered(client) == 1


async def test_a_corrupt_image_is_a_422_once_then_cached(client: Client) -> None:
    item = await upload_one(client, "broken.png", corrupt_png())
    for _ in range(5):
        detail = await expect_error(await client.get(thumbnail_path(item)), 422)
        assert detail.startswith("the image cannot be rendered")
    assert await rendered(client) == 1  # one render; the rest came from the cached failure


async def test_a_full_queue_answers_503_with_retry_after(make_client: MakeClient) -> None:
    # 100 sizes x 3 formats of one 6-megapixel photo, asked for all at once: far more renders
    # than the queue holds (64) can wait while two threads render.
    sizes = list(range(100, 400, 3))
    client = await make_client(thumbnail_sizes=tuple(sizes))
    item = await upload_one(client, "p.jpg", encode("jpg", picture((3000, 2000))))
    asks = [
        {"size": str(size), "format": fmt} for size in sizes for fmt in ("webp", "jpeg", "avif")
    ]
    responses = await asyncio.gather(*(client.get(thumbnail_path(item), params=q) for q in asks))
    statuses = [r.status for r in responses]
    assert set(statuses) == {200, 503}
    busy = [r for r in responses if r.status == 503]
    assert all(r.headers["Retry-After"] == "1" for r in busy)
    assert (await busy[0].json()) == {
        "detail": "too many thumbnails are being rendered; try again shortly"
    }
    assert await rendered(client) == statuses.count(200)
    # Asked again once the queue has drained, each is rendered.
    again = await client.get(thumbnail_path(item), params=asks[statuses.index(503)])
    assert again.status == 200


async def test_eager_renders_after_the_upload(make_client: MakeClient, upload_dir: Path) -> None:
    client = await make_client(thumbnails="eager", allowed_extensions=frozenset({"jpg", "bin"}))
    item = await upload_one(client, "p.jpg", encode("jpg", picture((1200, 900))))
    [other] = await upload_ok(client, ("notes.bin", b"\x00\x01"))  # no thumbnails to render
    assert other["thumbnail_url"] is None
    assert other["thumbnails"] == {}
    assert other["width"] is None
    assert other["orientation"] is None

    async def all_sizes() -> bool:
        return await rendered(client) == 2

    for _ in range(200):
        if await all_sizes():
            break
        await asyncio.sleep(0.05)
    assert await rendered(client) == 2
    assert len(list((upload_dir / ".thumbnails" / item["id"]).glob("*.webp"))) == 2
    for url in item["thumbnails"].values():
        assert (await client.get(local(url))).status == 200
    assert await rendered(client) == 2  # they were cached


async def test_delete_removes_the_thumbnails(client: Client, upload_dir: Path) -> None:
    item = await upload_one(client, "p.jpg", encode("jpg", picture((640, 480))))
    for url in item["thumbnails"].values():
        assert (await client.get(local(url))).status == 200
    cache = upload_dir / ".thumbnails" / item["id"]
    assert len(list(cache.glob("*.webp"))) == 2
    assert (await client.delete(f"/api/files/{item['id']}")).status == 204
    assert not cache.exists()
    assert (await client.get(thumbnail_path(item))).status == 404


async def test_unknown_ids_and_files_that_are_no_images_are_404(client: Client) -> None:
    missing = "019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"
    detail = await expect_error(await client.get(f"/api/files/{missing}/thumbnail"), 404)
    assert detail == f"no stored file has id {missing!r}"
    await expect_error(await client.get("/api/files/not-an-id/thumbnail"), 404)


async def test_the_cache_survives_a_restart_and_is_no_orphan(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client()
    item = await upload_one(client, "p.jpg", encode("jpg", picture((640, 480))))
    etag = (await client.get(thumbnail_path(item))).headers["ETag"]
    await client.close()
    # A crash between a delete's unlink and its thumbnails' removal left these behind.
    orphan = upload_dir / ".thumbnails" / "019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"
    orphan.mkdir()
    (orphan / "256-0123.webp").write_bytes(b"RIFF")
    os.utime(orphan, (1_000_000_000, 1_000_000_000))
    restarted = await make_client()  # reconciles with the folder at start-up
    listing = await (await restarted.get("/api/files")).json()
    assert [f["id"] for f in listing["data"]] == [item["id"]]  # nothing adopted from the cache
    response = await restarted.get(thumbnail_path(item))
    assert response.headers["ETag"] == etag
    assert await rendered(restarted) == 0  # served from the cache, not rendered again
    assert not orphan.exists()  # the thumbnails of a file without a record went


async def test_the_prune_walks_the_cache_a_chunk_at_a_time(
    make_client: MakeClient, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 2 folders (a thousand in production) over a cache of live files' thumbnails
    and orphans, and a folder of no id at all: only the orphans go."""
    monkeypatch.setattr(thumbnails, "_PRUNE_CHUNK", 2)
    client = await make_client()
    items = [
        await upload_one(client, f"{n}.jpg", encode("jpg", picture((64, 48)))) for n in range(3)
    ]
    for item in items:
        assert (await client.get(thumbnail_path(item))).status == 200
    await client.close()
    cache = upload_dir / ".thumbnails"
    orphans = [cache / new_id() for _ in range(4)] + [cache / "not-an-id"]
    for orphan in orphans:
        orphan.mkdir()
        (orphan / "256-0123.webp").write_bytes(b"RIFF")
        os.utime(orphan, (1_000_000_000, 1_000_000_000))
    await make_client()
    live = sorted(item["id"] for item in items)
    await eventually(lambda: sorted(p.name for p in cache.iterdir() if p.is_dir()) == live)


async def test_the_cache_is_never_served(client: Client, upload_dir: Path) -> None:
    item = await upload_one(client, "p.jpg", encode("jpg", picture((640, 480))))
    await client.get(thumbnail_path(item))
    [cached] = (upload_dir / ".thumbnails" / item["id"]).glob("*.webp")
    for path in (
        f"/uploads/.thumbnails/{item['id']}/{cached.name}",
        "/uploads/.thumbnails",
        f"/uploads/{cached.name}",
    ):
        assert (await client.get(path)).status == 404


async def test_items_carry_dimensions_and_links_in_either_catalog(
    make_client: MakeClient, database_url: str | None, tmp_path: Path
) -> None:
    client = await make_client(database_url=database_url)
    settings = client.app[SETTINGS]
    photo = phone_photo(tmp_path, "jpg", orientation=6, size=(64, 48))
    uploaded = await upload_one(client, "phone.jpg", photo)
    listed = (await (await client.get("/api/files")).json())["data"]
    got = await (await client.get(f"/api/files/{uploaded['id']}")).json()
    uploaded.pop("duplicate")
    assert listed == [uploaded]
    assert got == uploaded
    base = settings.base_url
    assert got["width"] == 48
    assert got["height"] == 64
    assert got["orientation"] == 6
    assert got["metadata_removed"] is True  # its GPS went (STRIP_METADATA=location)
    assert got["thumbnail_url"] == f"{base}/api/files/{got['id']}/thumbnail"
    assert got["thumbnails"] == {
        "256": f"{base}/api/files/{got['id']}/thumbnail?size=256",
        "1024": f"{base}/api/files/{got['id']}/thumbnail?size=1024",
    }
    assert (await client.get(local(got["thumbnail_url"]))).status == 200


async def test_the_documented_sizes_are_the_configured_ones(make_client: MakeClient) -> None:
    client = await make_client(thumbnail_sizes=(128, 512, 2048))
    document = await (await client.get("/openapi.json")).json()
    operation = document["paths"]["/api/files/{id}/thumbnail"]["get"]
    [size] = [p for p in operation["parameters"] if p["name"] == "size"]
    assert size["schema"] == {"type": "integer", "enum": [128, 512, 2048], "default": 128}
