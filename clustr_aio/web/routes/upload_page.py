"""``GET /upload``: a page that uploads photos with Uppy (Dashboard + Tus) to ``/api/tus/``.

Its scripts and styles are files of this package (``web/upload_page/``): Uppy's bundle is built
from npm (``web-assets/upload-page``, esbuild) and committed, so the page works with no CDN and
with nothing installed but the Python package.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from aiohttp import web

from clustr_aio.web.file_response import InlineFileResponse
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import FILE_REQUEST_HEADERS, file_responses

routes = web.RouteTableDef()

PAGE_DIR: Final = Path(__file__).resolve().parent.parent / "upload_page"
ASSETS: Final = {
    "uppy.js": "text/javascript",
    "uppy.css": "text/css",
    "upload.js": "text/javascript",
    "upload.css": "text/css",
}
_TAGS: Final = ("upload",)
_NO_CACHE: Final = {"Cache-Control": "no-cache"}  # revalidated (ETag): never a stale script
_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # Uppy's Dashboard (Preact) sets style attributes
        "img-src 'self' data: blob:",  # its icons, and thumbnails of the chosen files
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


@routes.get("/upload")
@operation(
    summary="Upload page (Uppy)",
    description="Drop photos on Uppy's Dashboard; each is sent by tus to `/api/tus/`, so it "
    "resumes after a dropped connection, with per-file progress.",
    tags=_TAGS,
    responses={
        200: {
            "description": "The page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_page(request: web.Request) -> web.Response:
    headers = {"Content-Security-Policy": _POLICY, **_NO_CACHE}
    return web.Response(body=_page(), content_type="text/html", charset="utf-8", headers=headers)


@functools.cache
def _page() -> bytes:
    return (PAGE_DIR / "index.html").read_bytes()  # on first request: importing reads no file


@routes.get("/upload/assets/{asset}")
@operation(
    summary="A script or style sheet of the upload page",
    description="Uppy's bundle (built from npm, shipped in the package) and the page's own.",
    tags=_TAGS,
    parameters=(
        {
            "name": "asset",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": sorted(ASSETS)},
            "example": "upload.js",
        },
        *FILE_REQUEST_HEADERS,
    ),
    responses=file_responses(
        sorted(set(ASSETS.values())), what="asset", not_found="No asset of that name."
    ),
)
async def upload_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return InlineFileResponse(PAGE_DIR / name, headers={"Content-Type": content_type, **_NO_CACHE})
