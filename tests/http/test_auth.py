"""AUTH=keys through a real server: every status the guard answers (401, 403, 404 for another
owner's file), owner isolation on list/get/delete/check, the key routes, refusals logged by
the key's name and counted, CORS with credentials; each test against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, PNG, Client, stored_files
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, files_body, multipart_headers

ORIGIN = "https://app.example"


async def new_key(client: Client, name: str, scopes: str, **options: Any) -> str:
    key, _ = await create_key(client.app[CATALOG], name, scopes, **options)
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def upload_as(client: Client, key: str, *files: tuple[str, bytes]) -> list[dict[str, Any]]:
    response = await client.post(
        "/api/upload", data=files_body(*files), headers={**multipart_headers(), **bearer(key)}
    )
    payload = await response.json()
    assert response.status == 200, payload
    items: list[dict[str, Any]] = payload["data"]
    return items


@pytest.fixture
async def keyed(make_client: MakeClient, database_url: str | None) -> Client:
    return await make_client(auth="keys", database_url=database_url)


async def test_every_api_route_needs_a_key_and_the_open_ones_stay_open(keyed: Client) -> None:
    for method, path in [
        ("GET", "/api/files"),
        ("POST", "/api/upload"),
        ("POST", "/api/files/check"),
        ("GET", "/api/keys"),
        ("GET", "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"),
    ]:
        response = await keyed.request(method, path)
        assert await expect_error(response, 401) == (
            "an API key is needed: Authorization: Bearer <key> or X-API-Key"
        )
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/", "/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/metrics"):
        assert (await keyed.get(path)).status == 200, path


async def test_unknown_revoked_and_expired_keys_are_401(keyed: Client) -> None:
    key = await new_key(keyed, "phone", "read")
    assert (await keyed.get("/api/files", headers=bearer(key))).status == 200
    assert (await keyed.get("/api/files", headers={"X-API-Key": key})).status == 200
    unknown = await keyed.get("/api/files", headers=bearer(key[:-1] + "x"))
    assert await expect_error(unknown, 401) == "this API key is not valid (unknown or revoked)"
    assert unknown.headers["WWW-Authenticate"].startswith("Bearer")
    not_bearer = await keyed.get("/api/files", headers={"Authorization": f"Basic {key}"})
    assert not_bearer.status == 401
    assert await keyed.app[CATALOG].revoke_key("phone")
    revoked = await keyed.get("/api/files", headers=bearer(key))
    assert await expect_error(revoked, 401) == "this API key is not valid (unknown or revoked)"
    expired = await new_key(keyed, "old", "read", expires_in=timedelta(seconds=1))
    assert (await keyed.get("/api/files", headers=bearer(expired))).status == 200
    await asyncio.sleep(1.1)
    gone = await keyed.get("/api/files", headers=bearer(expired))
    assert await expect_error(gone, 401) == "API key 'old' expired"


async def test_a_key_without_the_scope_is_403_naming_it(keyed: Client) -> None:
    reader = await new_key(keyed, "viewer", "read")
    refused = await keyed.post(
        "/api/upload",
        data=files_body(("a.jpg", JPEG)),
        headers={**multipart_headers(), **bearer(reader)},
    )
    assert await expect_error(refused, 403) == (
        "API key 'viewer' lacks the scope this needs: upload"
    )
    deleting = await keyed.delete(
        "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e", headers=bearer(reader)
    )
    assert (
        await expect_error(deleting, 403) == "API key 'viewer' lacks the scope this needs: delete"
    )
    assert (await keyed.get("/api/keys", headers=bearer(reader))).status == 403
    uploader = await new_key(keyed, "camera", "upload")
    assert (await keyed.get("/api/files", headers=bearer(uploader))).status == 403
    check = await keyed.post(
        "/api/files/check", json={"sha256": ["0" * 64]}, headers=bearer(uploader)
    )
    assert check.status == 200  # upload or read may check


async def test_owners_see_only_their_own_files_and_admin_sees_all(
    keyed: Client, upload_dir: Path
) -> None:
    alice = await new_key(keyed, "alice", "upload,read,delete")
    bob = await new_key(keyed, "bob", "upload,read,delete")
    admin = await new_key(keyed, "root", "admin")
    (mine,) = await upload_as(keyed, alice, ("a.jpg", JPEG))
    (theirs,) = await upload_as(keyed, bob, ("b.png", PNG))

    async def listed(key: str, query: str = "") -> list[str]:
        response = await keyed.get(f"/api/files{query}", headers=bearer(key))
        assert response.status == 200, await response.text()
        return [item["id"] for item in (await response.json())["data"]]

    assert await listed(alice) == [mine["id"]]
    assert await listed(bob) == [theirs["id"]]
    assert await listed(admin) == [theirs["id"], mine["id"]]
    assert await listed(admin, "?owner=alice") == [mine["id"]]
    assert await listed(alice, "?owner=alice") == [mine["id"]]
    other = await keyed.get("/api/files?owner=bob", headers=bearer(alice))
    assert await expect_error(other, 403) == "owner: only an admin key may name another owner"

    # Another owner's file does not exist for this key: 404, as for no file at all.
    peek = await keyed.get(f"/api/files/{theirs['id']}", headers=bearer(alice))
    assert await expect_error(peek, 404) == f"no stored file has id {theirs['id']!r}"
    assert (await keyed.get(f"/api/files/{mine['id']}", headers=bearer(alice))).status == 200
    assert (await keyed.get(f"/api/files/{theirs['id']}", headers=bearer(admin))).status == 200
    steal = await keyed.delete(f"/api/files/{theirs['id']}", headers=bearer(alice))
    assert steal.status == 404
    bulk = await keyed.post(
        "/api/files/delete", json={"ids": [theirs["id"], mine["id"]]}, headers=bearer(alice)
    )
    assert await bulk.json() == {"deleted": [mine["id"]], "missing": [theirs["id"]]}
    assert stored_files(upload_dir) == ["b.png"]

    digest = hashlib.sha256(PNG).hexdigest()
    for key, expected in ((alice, None), (bob, theirs["id"])):
        checked = await keyed.post(
            "/api/files/check", json={"sha256": [digest]}, headers=bearer(key)
        )
        assert (await checked.json())["results"] == [{"sha256": digest, "id": expected}]


async def test_dedupe_is_per_owner(make_client: MakeClient, database_url: str | None) -> None:
    client = await make_client(auth="keys", dedupe="reject", database_url=database_url)
    alice = await new_key(client, "alice", "upload")
    bob = await new_key(client, "bob", "upload")
    await upload_as(client, alice, ("a.jpg", JPEG))
    await upload_as(client, bob, ("a.jpg", JPEG))  # the same bytes, another owner: stored
    again = await client.post(
        "/api/upload",
        data=files_body(("a.jpg", JPEG)),
        headers={**multipart_headers(), **bearer(alice)},
    )
    assert again.status == 409


async def test_keys_are_managed_over_http_by_admins(keyed: Client) -> None:
    admin = await new_key(keyed, "root", "admin")
    made = await keyed.post(
        "/api/keys",
        json={"name": "phone", "scopes": ["upload"], "expires_in": "30d", "quota": "1MiB"},
        headers=bearer(admin),
    )
    body = await made.json()
    assert made.status == 201, body
    assert body["key"].startswith("clustr_")
    assert len(body["key"]) >= 7 + 43
    assert (body["owner"], body["scopes"], body["quota"]) == ("phone", ["upload"], 2**20)
    listed = await (await keyed.get("/api/keys", headers=bearer(admin))).json()
    assert [k["name"] for k in listed["data"]] == ["phone", "root"]
    assert all("key" not in k for k in listed["data"])
    assert body["key"] not in str(listed)
    taken = await keyed.post(
        "/api/keys", json={"name": "phone", "scopes": ["read"]}, headers=bearer(admin)
    )
    assert await expect_error(taken, 409) == "an API key named 'phone' exists already"
    bad = await keyed.post(
        "/api/keys", json={"name": "x", "scopes": ["all"]}, headers=bearer(admin)
    )
    assert bad.status == 400
    used = await keyed.post(
        "/api/upload",
        data=files_body(("a.jpg", JPEG)),
        headers={**multipart_headers(), "X-API-Key": body["key"]},
    )
    assert used.status == 200
    assert (await keyed.delete("/api/keys/phone", headers=bearer(admin))).status == 204
    assert (await keyed.delete("/api/keys/phone", headers=bearer(admin))).status == 404
    gone = await keyed.get("/api/files/check", headers={"X-API-Key": body["key"]})
    assert gone.status in (401, 405)


async def test_refusals_are_logged_by_key_name_and_counted(
    keyed: Client, caplog: pytest.LogCaptureFixture
) -> None:
    key = await new_key(keyed, "viewer", "read")
    with caplog.at_level(logging.WARNING, logger="clustr_aio.auth"):
        await keyed.post("/api/upload", headers=bearer(key))
        await keyed.get("/api/files", headers=bearer("clustr_wrong"))
    assert "refused (forbidden, 403): key viewer" in caplog.text
    assert "refused (unauthorized, 401): key -" in caplog.text
    assert key not in caplog.text
    assert "clustr_wrong" not in caplog.text
    metrics = await (await keyed.get("/metrics")).text()
    assert 'clustr_auth_refusals_total{reason="forbidden"} 1.0' in metrics
    assert 'clustr_auth_refusals_total{reason="unauthorized"} 1.0' in metrics


async def test_metrics_allow_limits_metrics_to_listed_addresses(make_client: MakeClient) -> None:
    elsewhere = await make_client(metrics_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    refused = await elsewhere.get("/metrics")
    assert await expect_error(refused, 403) == (
        "metrics are only served to the addresses in METRICS_ALLOW"
    )
    here = await make_client(metrics_allow=(ipaddress.ip_network("127.0.0.1/32"),))
    assert (await here.get("/metrics")).status == 200
    keyed = await make_client(auth="keys", metrics_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    admin = await new_key(keyed, "ops", "admin")
    reader = await new_key(keyed, "viewer", "read")
    assert (await keyed.get("/metrics", headers=bearer(admin))).status == 200
    for headers in (bearer(reader), bearer("clustr_nope"), {}):
        refused = await keyed.get("/metrics", headers=headers)
        assert await expect_error(refused, 403) == (
            "metrics are only served to the addresses in METRICS_ALLOW and to admin keys"
        )


async def test_cors_lets_listed_origins_send_keys_with_credentials(
    make_client: MakeClient,
) -> None:
    listed = await make_client(auth="keys", cors_origins=(ORIGIN,))
    preflight = await listed.options(
        "/api/files",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-api-key",
        },
    )
    assert preflight.status == 200
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed
    assert "x-api-key" in allowed
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    key = await new_key(listed, "web", "read")
    actual = await listed.get("/api/files", headers={"Origin": ORIGIN, **bearer(key)})
    assert actual.status == 200
    assert actual.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert actual.headers["Access-Control-Allow-Credentials"] == "true"
    # "*": any origin may send a key in a header, but never with credentials.
    anyone = await make_client(auth="keys")
    wildcard = await anyone.options(
        "/api/files",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert wildcard.status == 200
    assert "authorization" in wildcard.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in wildcard.headers


async def test_the_openapi_document_declares_the_security_schemes(keyed: Client) -> None:
    document = await (await keyed.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {**schemes["bearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["headerKey"]["name"] == "X-API-Key"
    upload = document["paths"]["/api/upload"]["post"]
    assert upload["security"] == [{"bearerKey": ["upload"]}, {"headerKey": ["upload"]}]
    assert {"401", "403"} <= set(upload["responses"])
    assert document["paths"]["/api/keys"]["get"]["security"][0] == {"bearerKey": ["admin"]}
    assert document["paths"]["/api/files/check"]["post"]["security"] == [
        {"bearerKey": ["upload"]},
        {"bearerKey": ["read"]},
        {"headerKey": ["upload"]},
        {"headerKey": ["read"]},
    ]
    assert "security" not in document["paths"]["/healthz"]["get"]


def answer_times_alike(first: list[float], second: list[float]) -> bool:
    """Whether two samples of answer times are within a factor of two of each other, by their
    lower quartiles: load from elsewhere on the machine only ever adds time, and adds it to
    the slow tail first."""
    ratio = statistics.quantiles(first, n=4)[0] / statistics.quantiles(second, n=4)[0]
    return 0.5 < ratio < 2.0


def test_answer_times_twice_as_long_are_not_alike() -> None:
    """The check below can fail: answers 2.5 times as long, with the same spread, are told
    apart (and the same times are not)."""
    times = [0.002 + 0.0001 * (n % 7) + (0.05 if n % 11 == 0 else 0.0) for n in range(60)]
    assert answer_times_alike(times, list(times))
    assert not answer_times_alike(times, [t * 2.5 for t in times])
    assert not answer_times_alike([t * 2.5 for t in times], times)


async def test_a_wrong_keys_answer_time_does_not_depend_on_how_much_of_it_matched(
    keyed: Client,
) -> None:
    """A smoke check only (the statistics of a real timing attack need far more samples than
    a test suite can spend): keys wrong in their first character and keys wrong in their last
    one, sent in turns (so that load from elsewhere falls on both alike), are answered in times
    alike (:func:`answer_times_alike`)."""
    key = await new_key(keyed, "target", "read")
    early = "clustr_" + ("A" if key[7] != "A" else "B") + key[8:]
    late = key[:-1] + ("A" if key[-1] != "A" else "B")

    async def answer_time(candidate: str) -> float:
        started = time.perf_counter()
        response = await keyed.get("/api/files", headers=bearer(candidate))
        elapsed = time.perf_counter() - started
        assert response.status == 401
        return elapsed

    for _ in range(10):  # warm up
        await answer_time(early)
        await answer_time(late)
    times: dict[str, list[float]] = {early: [], late: []}
    for n in range(120):
        candidate = (early, late, late, early)[n % 4]  # neither always first
        times[candidate].append(await answer_time(candidate))
    assert answer_times_alike(times[early], times[late]), times


async def test_the_open_mode_is_unchanged(client: Client) -> None:
    assert (await client.get("/api/files")).status == 200
    assert (await client.get("/api/keys")).status == 404
    document = await (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in document["components"]
    assert "security" not in document["paths"]["/api/upload"]["post"]
