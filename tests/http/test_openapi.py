"""The OpenAPI document and the pages that render it, through a real server.

The document must be valid OpenAPI 3.1, list exactly the routes the server has, and every
operation in it must really be served. The pages must load nothing but this server's files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from openapi_spec_validator import validate

from clustr_aio.web.app import create_app
from clustr_aio.web.openapi import JSONObject, build_openapi, served_routes
from clustr_aio.web.openapi.assets import MEDIA_TYPES, docs_assets
from clustr_aio.web.openapi.spec import RouteKey
from tests.conftest import JPEG, AiohttpClient, Client, make_settings
from tests.http.live_server import AiohttpServer, start_live_server

HOW_TO_DOCUMENT = (
    "document each route next to its handler with @clustr_aio.web.openapi.operation(...), "
    "built from clustr_aio.web.openapi.schemas"
)


@pytest.fixture
async def live(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, upload_dir: Path
) -> Client:
    """A client of a real server whose configured base URL is where it listens."""
    return await aiohttp_client(await start_live_server(aiohttp_server, upload_dir))


async def get_document(client: Client) -> JSONObject:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document: JSONObject = await response.json()
    return document


def documented(document: JSONObject) -> set[RouteKey]:
    return {
        RouteKey(path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }


def route_table(app: web.Application) -> set[RouteKey]:
    return {key for key, _route in served_routes(app.router)}


# ------------------------------------------------------------------------------ the document


async def test_document_is_valid_openapi_3_1(live: Client) -> None:
    document = await get_document(live)
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises with the offending part of the document


async def test_every_route_is_in_the_document_and_nothing_else(live: Client) -> None:
    in_router = route_table(live.app)
    in_document = documented(await get_document(live))
    assert in_router - in_document == set(), f"undocumented routes: {HOW_TO_DOCUMENT}"
    assert in_document - in_router == set(), "documented but not routed"
    # The routes this project is known to have, so an empty table cannot pass.
    assert {
        RouteKey("/", "GET"),
        RouteKey("/api/upload", "POST"),
        RouteKey("/uploads/{filename}", "GET"),
        RouteKey("/openapi.json", "GET"),
        RouteKey("/docs", "GET"),
        RouteKey("/redoc", "GET"),
    } <= in_document


async def test_a_route_added_without_documentation_is_caught(upload_dir: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = create_app(make_settings(upload_dir))
    before = route_table(app) - documented(build_openapi(app))
    app.router.add_get("/added-without-docs", handler)
    app.router.add_route("OPTIONS", "/custom-options", handler)  # not a CORS preflight
    app.router.add_head("/head-only", handler)  # no GET beside it
    missing = route_table(app) - documented(build_openapi(app)) - before
    assert missing == {
        RouteKey("/added-without-docs", "GET"),
        RouteKey("/custom-options", "OPTIONS"),
        RouteKey("/head-only", "HEAD"),
    }


async def test_static_route_path_follows_upload_url_path(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await aiohttp_client(create_app(make_settings(upload_dir, upload_url_path="/media")))
    paths = (await get_document(client))["paths"]
    assert "/media/{filename}" in paths
    assert "/uploads/{filename}" not in paths


async def test_server_url_is_the_public_base_url(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    settings = make_settings(upload_dir, public_base_url="https://photos.example.com/clustr")
    client = await aiohttp_client(create_app(settings))
    document = await get_document(client)
    assert [server["url"] for server in document["servers"]] == [
        "https://photos.example.com/clustr"
    ]
    # Swagger UI's "Try it out" calls that server: the page's policy must let it.
    response = await client.get("/docs")
    assert (
        "connect-src 'self' https://photos.example.com;"
        in response.headers["Content-Security-Policy"]
    )


async def test_server_url_is_what_a_trusted_proxy_forwarded(live: Client) -> None:
    """The same base URL as the preview_urls of an upload through that proxy."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "photos.example.com"}
    response = await live.get("/openapi.json", headers=forwarded)  # from 127.0.0.1: trusted
    document = await response.json()
    assert [server["url"] for server in document["servers"]] == ["https://photos.example.com"]
    direct = await get_document(live)
    assert [server["url"] for server in direct["servers"]] == [str(live.make_url("")).rstrip("/")]


def example_request(
    path: str, operation: JSONObject, values: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """A URL with each path parameter set to its example (or to ``values``, for ids that must
    exist), and a body a real client would send (the JSON example, when there is one)."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = (values or {}).get(parameter["name"], parameter["example"])
            path = path.replace(f"{{{parameter['name']}}}", value)
    assert "{" not in path, f"a path parameter of {path} has no example"
    options: dict[str, Any] = {}
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        form = FormData()
        form.add_field("files", JPEG, filename="beach.jpg", content_type="image/jpeg")
        options["data"] = form
    elif "application/json" in content:
        options["json"] = content["application/json"]["example"]
    return path, options


async def test_every_documented_operation_is_served(live: Client, upload_dir: Path) -> None:
    (upload_dir / "beach.jpg").write_bytes(JPEG)  # the example name of GET /uploads/{filename}
    form = FormData()
    form.add_field("files", JPEG, filename="kept.jpg", content_type="image/jpeg")
    uploaded = await live.post("/api/upload", data=form)
    # GET and then DELETE /api/files/{id} need a file that exists: this one.
    values = {"id": (await uploaded.json())["data"][0]["id"]}
    document = await get_document(live)
    tried = 0
    every = [
        (template, method, operation)
        for template, operations in document["paths"].items()
        for method, operation in operations.items()
    ]
    # DELETEs last, so that every GET (of the file, of its thumbnail) still finds the file.
    for template, method, operation in sorted(every, key=lambda m: m[1] == "delete"):
        url, options = example_request(template, operation, values)
        response = await live.request(method.upper(), url, **options)
        await response.read()
        where = f"{method.upper()} {url}"
        assert 200 <= response.status < 300, f"{where}: {response.status}"
        documented_response = operation["responses"].get(str(response.status))
        assert documented_response is not None, f"{where}: {response.status} undocumented"
        content = documented_response.get("content", {})
        if response.status != 204:
            assert response.content_type in content, f"{where}: {response.content_type}"
        tried += 1
    assert tried >= 12


# ------------------------------------------------------------------------------ the pages

_LINKED = re.compile(r'\b(?:src|href|spec-url)="([^"]*)"')


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_page_loads_only_this_servers_files(live: Client, page: str) -> None:
    response = await live.get(page)
    assert response.status == 200
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy  # no inline script, no eval, no other host
    html = await response.text()
    linked = _LINKED.findall(html)
    assert linked, html
    for url in linked:
        assert not re.match(r"[a-z]+:|//", url), f"{url} is not on this server"
        asset = await live.get(f"/{url}")  # relative to the page, which sits at the root
        assert asset.status == 200, url
        await asset.read()


async def test_assets_are_the_packaged_swagger_ui_and_redoc(live: Client) -> None:
    assets = docs_assets()
    assert set(assets) == set(MEDIA_TYPES)
    for name, asset in assets.items():
        response = await live.get(f"/docs/static/{name}")
        assert response.status == 200, name
        assert response.headers["Content-Type"] == asset.content_type
        assert await response.read() == asset.path.read_bytes()
        again = await live.get(
            f"/docs/static/{name}", headers={"If-None-Match": response.headers["ETag"]}
        )
        assert again.status == 304, name
    assert b"SwaggerUIBundle" in assets["swagger-ui-bundle.js"].path.read_bytes()[:2000]
    # The package's __init__ imports Django: it is read from, never imported.
    assert "django" not in sys.modules


@pytest.mark.parametrize(
    "name", ["swagger-ui-bundle.js.map", "LICENSE", "apps.py", "..%2Fapps.py", "index.html"]
)
async def test_nothing_else_of_the_asset_package_is_served(live: Client, name: str) -> None:
    response = await live.get(f"/docs/static/{name}")
    assert response.status == 404
    assert await response.json() == {"detail": "Not Found"}


async def test_a_missing_stored_file_is_a_json_404(live: Client) -> None:
    # aiohttp's static route alone would answer an empty application/octet-stream 404.
    for method in ("GET", "HEAD"):
        response = await live.request(method, "/uploads/never-stored.jpg")
        assert response.status == 404
        assert response.content_type == "application/json"
    response = await live.get("/uploads/never-stored.jpg")
    assert await response.json() == {"detail": "Not Found"}
