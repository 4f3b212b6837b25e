"""``GET /openapi.json``, ``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and their assets."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from clustr_aio.web.base_url import request_base_url
from clustr_aio.web.file_response import InlineFileResponse
from clustr_aio.web.openapi import build_openapi, operation
from clustr_aio.web.openapi.assets import MEDIA_TYPES, PAGES_DIR, docs_assets
from clustr_aio.web.openapi.schemas import FILE_REQUEST_HEADERS, file_responses, json_response
from clustr_aio.web.responses import json_answer

routes = web.RouteTableDef()

_TAGS: Final = ("documentation",)
# Revalidate every time (cheap: ETag/304), so an upgrade never runs with stale scripts.
_NO_CACHE: Final = {"Cache-Control": "no-cache"}

_PageHandler = Callable[[web.Request], Awaitable[web.Response]]


def _html_page(title: str, description: str) -> Callable[[_PageHandler], _PageHandler]:
    """The operation of a documentation page (the two differ only in these)."""
    html = {"text/html": {"schema": {"type": "string"}}}
    return operation(
        summary=title,
        description=description,
        tags=_TAGS,
        responses={200: {"description": f"The {title} page.", "content": html}},
    )


@routes.get("/openapi.json")
@operation(
    summary="This OpenAPI document",
    description="OpenAPI 3.1, built from the server's route table. The server URL is the one "
    "`preview_url`s are built on (PUBLIC_BASE_URL, else what a trusted proxy forwarded, else "
    "HOST:PORT); the limits in the description are this server's settings.",
    tags=_TAGS,
    responses={
        200: json_response(
            "The document.",
            {"type": "object", "required": ["openapi", "info", "paths"]},
        )
    },
)
async def openapi_document(request: web.Request) -> web.Response:
    document = build_openapi(request.app, server_url=request_base_url(request))
    return json_answer(document, headers=_NO_CACHE)


@routes.get("/docs")
@_html_page("Swagger UI", "Interactive documentation: try the upload from the browser.")
async def swagger_ui(request: web.Request) -> web.Response:
    return _page(request, _page_bytes("swagger.html"))


@routes.get("/redoc")
@_html_page("ReDoc", "The same document, as a readable reference.")
async def redoc(request: web.Request) -> web.Response:
    return _page(request, _page_bytes("redoc.html"))


@routes.get("/docs/static/{asset}")
@operation(
    summary="A script, style sheet or icon of the documentation pages",
    description="Swagger UI and ReDoc as released (from the drf-spectacular-sidecar package), "
    "served by this server so the pages work without internet access.",
    tags=_TAGS,
    parameters=(
        {
            "name": "asset",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": sorted(MEDIA_TYPES)},
            "example": "swagger-ui-bundle.js",
        },
        *FILE_REQUEST_HEADERS,
    ),
    responses=file_responses(
        sorted(set(MEDIA_TYPES.values())),
        what="asset",
        not_found="No asset of that name.",
    ),
)
async def docs_asset(request: web.Request) -> web.FileResponse:
    asset = docs_assets().get(request.match_info["asset"])
    if asset is None:
        raise web.HTTPNotFound()
    # As a stored file is sent: no thread-pool round trips, JSON 412/416.
    headers = {"Content-Type": asset.content_type, **_NO_CACHE}
    return InlineFileResponse(asset.path, headers=headers)


@functools.cache
def _page_bytes(name: str) -> bytes:
    """A page shipped in the package, read on first request (importing reads no file)."""
    return (PAGES_DIR / name).read_bytes()


def _page(request: web.Request, body: bytes) -> web.Response:
    headers = {"Content-Security-Policy": _content_security_policy(request), **_NO_CACHE}
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


def _content_security_policy(request: web.Request) -> str:
    """Everything from this server only. Exceptions, each needed by the pages as released:
    inline styles (ReDoc's styled-components, Swagger UI's React), data: images (icons inside
    Swagger UI's CSS) and a blob: worker (ReDoc's search index). Swagger UI's "Try it out"
    also calls the document's server URL, which can be another origin than the page's."""
    server = urlsplit(request_base_url(request))
    server_origin = f"{server.scheme}://{server.netloc}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            f"connect-src 'self' {server_origin}",
            "worker-src 'self' blob:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
