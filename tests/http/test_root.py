"""``GET /``: the liveness greeting."""

from __future__ import annotations

from tests.conftest import Client


async def test_root_says_hello(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"message": "Hello World"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_root_answers_head(client: Client) -> None:
    response = await client.head("/")
    assert response.status == 200


async def test_request_id_is_echoed_when_sane_and_made_up_otherwise(client: Client) -> None:
    response = await client.get("/", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await client.get("/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["X-Request-ID"] not in ("", "bad id\twith spaces")
