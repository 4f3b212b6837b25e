"""``GET /uploads/{filename}``: the stored files, read back through the storage's
:class:`~clustr_aio.storage.base.Reading` capability. A file on this machine's disk is sent
with sendfile (:mod:`clustr_aio.web.file_response`); a backend that keeps its bytes elsewhere
answers with a redirect. The prefix is ``UPLOAD_URL_PATH``, so the route is added by
:func:`add_routes` rather than declared in a route table."""

from __future__ import annotations

from aiohttp import web

from clustr_aio.domain.sniff import STORED_CONTENT_TYPES
from clustr_aio.storage.base import OnDisk, Redirect
from clustr_aio.web.file_response import CONTENT_SECURITY_POLICY, file_response
from clustr_aio.web.keys import CATALOG, FILE_READER
from clustr_aio.web.links import refuse_unsigned
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import (
    FILE_REQUEST_HEADERS,
    error_response,
    file_responses,
)
from clustr_aio.web.remote_response import remote_response
from clustr_aio.web.responses import error_response as json_error

__all__ = ["ROUTE_NAME", "add_routes"]

ROUTE_NAME = "uploads"


def add_routes(router: web.UrlDispatcher, prefix: str) -> None:
    """``GET`` (and ``HEAD``) ``<prefix>/{filename}``: one path segment, so sub-folders and
    ``<prefix>/`` itself are a 404 like any unknown path."""
    router.add_get(f"{prefix.rstrip('/')}/{{filename}}", stored_file, name=ROUTE_NAME)


@operation(
    summary="Download a stored file",
    description="The bytes of a file stored by `POST /api/upload`, at the `preview_url` its "
    "upload answered. Supports `ETag`/`If-None-Match`, `Last-Modified`/`If-Modified-Since` "
    "(304) and a single `Range` (206, or the whole file when `If-Range` names another "
    "version); `HEAD` answers the same headers without the body. "
    "Images go out as their type; any other file as `application/octet-stream` with "
    "`Content-Disposition: attachment`, and every answer carries `Content-Security-Policy: "
    "default-src 'none'; sandbox`. Names that start with a dot, symlinks and sub-folders are "
    "never served. With PUBLIC_FILES=false, only at the signed URL the API handed out "
    "(`?expires=<Unix time>&signature=<HMAC>`, part of the URL as handed out, not parameters "
    "to set); without them, expired or altered: 403, whether the file exists or not.",
    tags=("files",),
    operation_id="get_stored_file",
    parameters=(
        {
            "name": "filename",
            "in": "path",
            "required": True,
            "description": "`stored_filename` from the upload's answer.",
            "schema": {"type": "string"},
            "example": "beach.jpg",
        },
        *FILE_REQUEST_HEADERS,
    ),
    responses={
        **file_responses(
            STORED_CONTENT_TYPES, what="file", not_found="No stored file of that name."
        ),
        302: {
            "description": "STORAGE=s3 with S3_SERVE=redirect: the file is at the `Location`, a "
            "presigned URL of the store valid five minutes.",
            "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
        },
        403: error_response(
            "The name is not a regular file, or not readable; or (PUBLIC_FILES=false) the URL "
            "is not signed, its signature is not valid, or it has expired.",
            "Forbidden",
            "this file is served only at a signed URL from the API",
            "this file URL has expired; ask the API for a new one",
        ),
        503: error_response(
            "STORAGE=s3: the store could not be reached; try again after `Retry-After`.",
            "the file store is unavailable; nothing of this upload was kept, try again",
        ),
    },
)
async def stored_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["filename"]
    refusal = refuse_unsigned(request)
    if refusal is not None:
        return json_error(
            403, refusal.detail, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
        )
    reader = request.app.get(FILE_READER)
    location = await reader.locate(name) if reader is not None else None
    if isinstance(location, OnDisk):
        return file_response(request, location.path, name)
    # A shared store may hold an object whose upload is not committed (yet, or ever, after a
    # crash): the catalog decides what is stored.
    if location is not None and name in await request.app[CATALOG].recorded([name]):
        if isinstance(location, Redirect):
            # Short-lived: a cache may keep the redirect for a minute, never past the URL's life.
            raise web.HTTPFound(location.url, headers={"Cache-Control": "private, max-age=60"})
        return await remote_response(request, location)
    return json_error(
        404, "Not Found", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    )
