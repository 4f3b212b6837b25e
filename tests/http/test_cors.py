"""CORS through aiohttp-cors: preflight and actual requests, with CORS_ORIGINS `*` and a list."""

from __future__ import annotations

from tests.conftest import JPEG, Client
from tests.http.conftest import MakeClient
from tests.http.helpers import files_body, multipart_headers

ORIGIN = "https://app.example"


def preflight_headers(origin: str) -> dict[str, str]:
    """What a browser sends before a cross-origin multipart POST with a custom header."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-request-id",
    }


async def test_preflight_for_upload_is_allowed_from_any_origin(client: Client) -> None:
    response = await client.options("/api/upload", headers=preflight_headers(ORIGIN))
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] in (ORIGIN, "*")
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"content-type", "x-request-id"} <= allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_actual_upload_gets_the_allow_origin_header(client: Client) -> None:
    response = await client.post(
        "/api/upload",
        data=files_body(("a.jpg", JPEG)),
        headers={**multipart_headers(), "Origin": ORIGIN},
    )
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] in (ORIGIN, "*")
    # A browser script may read the request id it would quote in a bug report.
    exposed = response.headers.get("Access-Control-Expose-Headers", "").lower()
    assert "x-request-id" in exposed


async def test_errors_carry_cors_headers_so_the_page_can_read_the_detail(client: Client) -> None:
    response = await client.post(
        "/api/upload",
        data=files_body(("notes.txt", b"text")),
        headers={**multipart_headers(), "Origin": ORIGIN},
    )
    assert response.status == 415
    assert response.headers["Access-Control-Allow-Origin"] in (ORIGIN, "*")


async def test_root_and_stored_files_allow_cross_origin_reads(client: Client) -> None:
    assert (await client.get("/", headers={"Origin": ORIGIN})).headers[
        "Access-Control-Allow-Origin"
    ] in (ORIGIN, "*")
    await client.post("/api/upload", data=files_body(("a.jpg", JPEG)), headers=multipart_headers())
    response = await client.get("/uploads/a.jpg", headers={"Origin": ORIGIN})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] in (ORIGIN, "*")


async def test_no_origin_no_cors_headers(client: Client) -> None:
    response = await client.get("/")
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_listed_origins_only(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=("https://a.example",))

    allowed = await client.options("/api/upload", headers=preflight_headers("https://a.example"))
    assert allowed.status == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://a.example"

    refused = await client.options("/api/upload", headers=preflight_headers("https://b.example"))
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert refused.content_type == "application/json"

    for origin, expected in (
        ("https://a.example", "https://a.example"),
        ("https://b.example", None),
    ):
        response = await client.post(
            "/api/upload",
            data=files_body(("a.jpg", JPEG)),
            headers={**multipart_headers(), "Origin": origin},
        )
        assert response.status == 200
        assert response.headers.get("Access-Control-Allow-Origin") == expected


async def test_no_origins_configured_means_no_cors(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=())
    response = await client.get("/", headers={"Origin": ORIGIN})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await client.options("/api/upload", headers=preflight_headers(ORIGIN))
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_responses_vary_on_origin_for_shared_caches(client: Client) -> None:
    """aiohttp-cors echoes the caller's Origin rather than answering "*": a CDN or proxy cache
    in front of /uploads must not hand one origin's answer to another."""
    await client.post("/api/upload", data=files_body(("a.jpg", JPEG)), headers=multipart_headers())
    for headers in ({"Origin": ORIGIN}, {}):
        response = await client.get("/uploads/a.jpg", headers=headers)
        assert response.status == 200
        vary = {
            v.strip().lower()
            for value in response.headers.getall("Vary", [])
            for v in value.split(",")
        }
        assert "origin" in vary
