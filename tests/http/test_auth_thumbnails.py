"""Thumbnails under access control, through the real server with libvips rendering: with
AUTH=keys another owner's image has no thumbnail (404), also once it is in the cache; with
PUBLIC_FILES=false a thumbnail is served at its signed URL without a key, and refused (403)
unsigned, altered or expired."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import Client
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, files_body, multipart_headers, upload_ok
from tests.images.photos import encode, picture

SECRET = "t" * 32


def photo() -> bytes:
    return encode("jpg", picture((120, 80)))


def target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def upload_as(client: Client, key: str) -> dict[str, Any]:
    response = await client.post(
        "/api/upload",
        data=files_body(("a.jpg", photo())),
        headers={**multipart_headers(), "Authorization": f"Bearer {key}"},
    )
    body = await response.json()
    assert response.status == 200, body
    item: dict[str, Any] = body["data"][0]
    return item


async def test_another_owners_thumbnail_is_not_found(make_client: MakeClient) -> None:
    client = await make_client(auth="keys")
    alice, _ = await create_key(client.app[CATALOG], "alice", "upload,read")
    bob, _ = await create_key(client.app[CATALOG], "bob", "upload,read")
    admin, _ = await create_key(client.app[CATALOG], "root", "admin")
    item = await upload_as(client, alice)
    path = target(item["thumbnail_url"])
    assert (await client.get(path)).status == 401
    own = await client.get(path, headers={"X-API-Key": alice})
    assert own.status == 200
    assert own.content_type == "image/webp"
    # In the cache now: bob still finds nothing, and admin sees it.
    peek = await client.get(path, headers={"X-API-Key": bob})
    assert await expect_error(peek, 404) == f"no stored file has id {item['id']!r}"
    assert (await client.get(path, headers={"X-API-Key": admin})).status == 200


async def test_private_files_thumbnails_are_served_at_their_signed_urls(
    make_client: MakeClient,
) -> None:
    client = await make_client(public_files=False, secret_key=(SECRET,))
    (item,) = await upload_ok(client, ("a.jpg", photo()))
    url = target(item["thumbnail_url"])
    assert "signature=" in url
    assert (await client.get(url)).status == 200
    sized = target(item["thumbnails"]["1024"])
    assert "size=1024" in sized
    assert (await client.get(sized)).status == 200
    unsigned = await client.get(f"/api/files/{item['id']}/thumbnail")
    assert await expect_error(unsigned, 403) == (
        "this file is served only at a signed URL from the API"
    )
    other = f"/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail?{urlsplit(url).query}"
    assert await expect_error(await client.get(other), 403) == (
        "this file URL's signature is not valid"
    )


async def test_with_keys_a_signed_thumbnail_needs_no_key(make_client: MakeClient) -> None:
    client = await make_client(auth="keys", public_files=False, secret_key=(SECRET,))
    alice, _ = await create_key(client.app[CATALOG], "alice", "upload,read")
    item = await upload_as(client, alice)
    assert (await client.get(target(item["thumbnail_url"]))).status == 200
    assert (await client.get(target(item["preview_url"]))).status == 200
    unsigned = await client.get(f"/api/files/{item['id']}/thumbnail")
    assert unsigned.status == 401  # without a signature, a key is what it takes
    keyed = await client.get(f"/api/files/{item['id']}/thumbnail", headers={"X-API-Key": alice})
    assert keyed.status == 200


async def test_a_signed_thumbnail_url_covers_its_size_and_format(make_client: MakeClient) -> None:
    client = await make_client(public_files=False, secret_key=(SECRET,))
    (item,) = await upload_ok(client, ("a.jpg", photo()))
    default, large = target(item["thumbnail_url"]), target(item["thumbnails"]["1024"])
    signature = large.partition("?")[2].replace("size=1024&", "")
    assert signature.startswith("expires=")
    path = large.partition("?")[0]
    # The parameters in another order: the same URL.
    assert (await client.get(f"{path}?{signature}&size=1024")).status == 200
    tampered = [
        large.replace("size=1024", "size=256"),  # another size, allowed by THUMBNAIL_SIZES
        f"{large}&format=avif",  # a format the URL did not name
        f"{default}&size=1024",  # a size added to the default's URL
        f"{default}&format=jpeg",
        f"{path}?{signature}",  # the size taken away
        f"{large}&size=256",  # repeated
    ]
    for url in tampered:
        response = await client.get(url)
        assert await expect_error(response, 403) == "this file URL's signature is not valid", url
    # Nothing was rendered for them: only the two real URLs' thumbnails are in the cache.
    assert (await client.get(default)).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "clustr_thumbnails_rendered_total 2.0" in metrics
    assert 'clustr_auth_refusals_total{reason="bad_signature"} 6.0' in metrics
