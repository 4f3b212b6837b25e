"""Rate limits through a real server: 429 with Retry-After past the bucket, RateLimit-Policy
and RateLimit headers (IETF httpapi draft syntax) on every answer of a limited route, per key
with AUTH=keys and per client address without (forwarded only by a trusted proxy), the
upload-bytes bucket before the body. Across two workers: tests/process/test_auth_processes.py."""

from __future__ import annotations

import ipaddress
import re

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, Client
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, files_body, multipart_headers

POLICY = re.compile(r'"requests";q=3;w=60')


async def test_past_the_bucket_a_429_with_retry_after_and_ratelimit_headers(
    make_client: MakeClient,
) -> None:
    client = await make_client(rate_limit_requests=(3, 60))
    seen = []
    for _ in range(3):
        response = await client.get("/api/files")
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"requests";q=3;w=60'
        seen.append(response.headers["RateLimit"])
    assert seen[0].startswith('"requests";r=2;t=')
    assert seen[2].startswith('"requests";r=0;t=')
    refused = await client.get("/api/files")
    assert (await expect_error(refused, 429)).startswith(
        "rate limit of 3 requests per 60 s reached; retry after "
    )
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit"].startswith('"requests";r=0;t=')
    assert refused.headers["RateLimit-Policy"] == '"requests";q=3;w=60'
    # Routes outside /api are not limited, and carry no such headers.
    root = await client.get("/")
    assert root.status == 200
    assert "RateLimit" not in root.headers
    metrics = await (await client.get("/metrics")).text()
    assert 'clustr_auth_refusals_total{reason="rate_limited"} 1.0' in metrics


async def test_each_key_has_its_own_bucket(make_client: MakeClient) -> None:
    client = await make_client(auth="keys", rate_limit_requests=(2, 60))
    one, _ = await create_key(client.app[CATALOG], "one", "read")
    two, _ = await create_key(client.app[CATALOG], "two", "read")
    for key, expected in ((one, 200), (one, 200), (one, 429), (two, 200), (two, 200)):
        response = await client.get("/api/files", headers={"X-API-Key": key})
        assert response.status == expected
    # Wrong keys are limited by address, so guessing is too.
    statuses = [
        (await client.get("/api/files", headers={"X-API-Key": "clustr_guess"})).status
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]


async def test_in_the_open_mode_each_client_address_has_its_own_bucket(
    make_client: MakeClient,
) -> None:
    behind_proxy = await make_client(rate_limit_requests=(1, 60))
    for address in ("192.0.2.1", "192.0.2.2"):
        response = await behind_proxy.get("/api/files", headers={"X-Forwarded-For": address})
        assert response.status == 200
    again = await behind_proxy.get("/api/files", headers={"X-Forwarded-For": "192.0.2.1"})
    assert again.status == 429
    forwarded = await behind_proxy.get("/api/files", headers={"Forwarded": "for=192.0.2.3"})
    assert forwarded.status == 200
    # From an untrusted peer the header is the client's own claim: ignored.
    direct = await make_client(
        rate_limit_requests=(1, 60), forwarded_allow_ips=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    first = await direct.get("/api/files", headers={"X-Forwarded-For": "192.0.2.1"})
    second = await direct.get("/api/files", headers={"X-Forwarded-For": "192.0.2.2"})
    assert (first.status, second.status) == (200, 429)


async def test_upload_bytes_are_limited_before_the_body(make_client: MakeClient) -> None:
    body = files_body(("a.jpg", JPEG))
    client = await make_client(rate_limit_upload_bytes=(len(body) * 2 + 10, 3600))
    for expected in (200, 200, 429):
        response = await client.post("/api/upload", data=body, headers=multipart_headers())
        assert response.status == expected, await response.text()
        policies = response.headers["RateLimit-Policy"]
        assert f'"upload-bytes";q={len(body) * 2 + 10};qu="content-bytes";w=3600' in policies
    assert int(response.headers["Retry-After"]) >= 1
    assert (await client.get("/api/files")).status == 200  # no request limit set


async def test_rate_limit_headers_name_both_policies_on_an_upload(make_client: MakeClient) -> None:
    client: Client = await make_client(
        rate_limit_requests=(100, 60), rate_limit_upload_bytes=(10**9, 3600)
    )
    response = await client.post(
        "/api/upload", data=files_body(("a.jpg", JPEG)), headers=multipart_headers()
    )
    assert response.status == 200
    assert response.headers["RateLimit-Policy"] == (
        '"requests";q=100;w=60, "upload-bytes";q=1000000000;qu="content-bytes";w=3600'
    )
    assert re.fullmatch(
        r'"requests";r=99;t=\d+, "upload-bytes";r=\d+;t=\d+', response.headers["RateLimit"]
    )
