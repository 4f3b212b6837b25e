"""PUBLIC_FILES=false: /uploads serves a file only at the signed, expiring URL the API handed
out; missing, expired or altered signatures are a 403 that is the same whether the file exists
or not; secrets rotate."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

from tests.conftest import JPEG, PNG
from tests.http.conftest import MakeClient
from tests.http.helpers import upload_ok

SECRET = "s" * 32
NEWER = "n" * 40


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def test_a_file_is_served_only_at_its_signed_url(make_client: MakeClient) -> None:
    client = await make_client(public_files=False, secret_key=(SECRET,))
    (item, other) = await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG))
    url = path_of(item["preview_url"])
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"expires", "signature"}
    assert abs(int(query["expires"][0]) - (time.time() + 3600)) < 60
    served = await client.get(url)
    assert served.status == 200
    assert await served.read() == JPEG
    listed = await (await client.get(f"/api/files/{item['id']}")).json()
    assert (await client.get(path_of(listed["preview_url"]))).status == 200

    unsigned = await client.get("/uploads/a.jpg")
    missing = await client.get("/uploads/no-such-file.jpg")
    for response in (unsigned, missing):
        assert response.status == 403
        assert await response.json() == {
            "detail": "this file is served only at a signed URL from the API"
        }
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    signature = query["signature"][0]
    tampered = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    expires = query["expires"][0]
    altered = [
        f"/uploads/a.jpg?expires={expires}&signature={tampered}",
        f"/uploads/a.jpg?expires={int(expires) + 1}&signature={signature}",
        f"/uploads/b.png?expires={expires}&signature={signature}",  # another file's URL
        f"/uploads/no-such-file.jpg?expires={expires}&signature={signature}",
        f"/uploads/a.jpg?expires=%C3%A9&signature={signature}",
        f"/uploads/a.jpg?expires={expires}&signature=%C3%A9",
    ]
    for target in altered:
        response = await client.get(target)
        assert response.status == 403, target
        assert await response.json() == {"detail": "this file URL's signature is not valid"}
    assert (await client.get(path_of(other["preview_url"]))).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'clustr_auth_refusals_total{reason="bad_signature"} 8.0' in metrics


async def test_an_expired_url_is_refused(make_client: MakeClient) -> None:
    client = await make_client(public_files=False, secret_key=(SECRET,), signed_url_ttl=1)
    (item,) = await upload_ok(client, ("a.jpg", JPEG))
    assert (await client.get(path_of(item["preview_url"]))).status == 200
    await asyncio.sleep(2.1)
    expired = await client.get(path_of(item["preview_url"]))
    assert expired.status == 403
    assert await expired.json() == {
        "detail": "this file URL has expired; ask the API for a new one"
    }


async def test_secrets_rotate_the_new_one_first(make_client: MakeClient) -> None:
    old = await make_client(public_files=False, secret_key=(SECRET,))
    (item,) = await upload_ok(old, ("a.jpg", JPEG))
    signed_with_old = path_of(item["preview_url"])
    rotated = await make_client(public_files=False, secret_key=(NEWER, SECRET))
    assert (await rotated.get(signed_with_old)).status == 200
    fresh = await (await rotated.get(f"/api/files/{item['id']}")).json()
    assert fresh["preview_url"] != item["preview_url"]
    assert (await rotated.get(path_of(fresh["preview_url"]))).status == 200
    retired = await make_client(public_files=False, secret_key=(NEWER,))
    assert (await retired.get(signed_with_old)).status == 403
    assert (await retired.get(path_of(fresh["preview_url"]))).status == 200
