"""``GET /api/files/{id}/thumbnail``: a stored image's thumbnail, from the cache of
:class:`~clustr_aio.images.thumbnails.Thumbnailer` (rendered first if it is not there yet).

Only the sizes of ``THUMBNAIL_SIZES`` exist (an arbitrary size would let anyone make the server
render and keep without end); the format is ``format``'s, else the one ``Accept`` prefers of
WebP, AVIF and JPEG (WebP when it has no preference). A thumbnail's bytes never change under
its ETag (the renderer's identity of the file's hash, the size and the format), so it goes out
``immutable``, and a matching ``If-None-Match`` is a 304 without a render. A hot thumbnail is
found from the thumbnailer's memory alone (:meth:`Thumbnailer.cached`: no catalog query), which
remembers each file's owner: a key that sees one owner's files gets another owner's image as a
404 from the catalog, as if it did not exist. With PUBLIC_FILES=false its URL in the items is
signed, and admits without a key (an ``<img>`` sends none). The hottest GETs do not even get
here: :mod:`clustr_aio.web.hot_thumbnails` answers them from the connection.
"""

from __future__ import annotations

import os
from typing import Final

from aiohttp import hdrs, web

from clustr_aio.catalog.base import FileRecord
from clustr_aio.domain.errors import BadRequest, NotFound
from clustr_aio.images.sources import render_source
from clustr_aio.images.thumbnails import (
    DEFAULT_FORMAT,
    FORMATS,
    THUMBNAIL_TYPES,
    Thumbnailer,
    ThumbnailFormat,
)
from clustr_aio.web.file_response import CONTENT_SECURITY_POLICY, immutable_file_response
from clustr_aio.web.guard import requires
from clustr_aio.web.keys import SETTINGS, STORAGE, THUMBNAILER
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import error_response
from clustr_aio.web.openapi.spec import ENUM_SETTING
from clustr_aio.web.routes.files import ID_PARAMETER, ID_SEGMENT, requested_record, visible_owner

__all__ = ["CACHE_CONTROL", "names_etag", "negotiate_format", "routes"]

routes = web.RouteTableDef()

CACHE_CONTROL: Final = "public, max-age=31536000, immutable"
_PREFERENCE: Final = ("webp", "avif", "jpeg")
"""The server's order among formats a client accepts as much: WebP renders fastest for its
size, AVIF is smaller but costs several times the CPU, JPEG is the fallback."""
_MEDIA_TYPES: Final = {FORMATS[name].content_type: name for name in _PREFERENCE}


def negotiate_format(accept: str | None) -> str:
    """The format ``Accept`` prefers (its q-values, then the server's order); WebP when the
    header is absent or accepts none of them (a thumbnail is better than a 406 for an
    ``<img>``)."""
    if not accept:
        return DEFAULT_FORMAT
    quality: dict[str, float] = {}
    wildcard = 0.0
    for item in accept.split(","):
        media_type, _, parameters = item.partition(";")
        media_type = media_type.strip().lower()
        q = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media_type in _MEDIA_TYPES:
            quality[_MEDIA_TYPES[media_type]] = q
        elif media_type in ("image/*", "*/*"):
            wildcard = max(wildcard, q)
    best = max(_PREFERENCE, key=lambda name: quality.get(name, wildcard))
    return best if quality.get(best, wildcard) > 0 else DEFAULT_FORMAT


def _size(request: web.Request) -> int:
    sizes = request.app[SETTINGS].thumbnail_sizes
    text = request.query.get("size")
    if text is None:
        return sizes[0]
    if not (text.isascii() and text.isdigit()) or int(text) not in sizes:
        offered = ", ".join(str(size) for size in sizes)
        raise BadRequest(f"size: expected one of {offered} (THUMBNAIL_SIZES), got {text!r}")
    return int(text)


def _format(request: web.Request) -> ThumbnailFormat:
    text = request.query.get("format")
    if text is None:
        return FORMATS[negotiate_format(request.headers.get(hdrs.ACCEPT))]
    fmt = FORMATS.get(text)
    if fmt is None:
        raise BadRequest(f"format: expected one of {', '.join(_PREFERENCE)}, got {text!r}")
    return fmt


async def _record(request: web.Request) -> FileRecord:
    record = await requested_record(request)
    if record.content_type not in THUMBNAIL_TYPES:
        raise NotFound(f"file {record.id!r} is not an image: it has no thumbnail")
    return record


@routes.get(f"/api/files/{{id:{ID_SEGMENT}}}/thumbnail")
@requires("read", signed_urls=True)
@operation(
    summary="A stored image's thumbnail",
    description="The image scaled down to `size` (its longest side; never up), upright (EXIF "
    "orientation applied), in sRGB, the first frame of an animation, without metadata; "
    "rendered by libvips on first request (or after the upload, with THUMBNAILS=eager) and "
    "cached. `format` chooses WebP, JPEG or AVIF; without it `Accept` does (WebP when it has "
    "no preference). The answer is `immutable` with a strong `ETag`: `If-None-Match` with it "
    "is a 304. Items of `/api/upload` and `/api/files` link these (`thumbnail_url`, "
    "`thumbnails`).",
    tags=("files",),
    operation_id="get_thumbnail",
    parameters=(
        ID_PARAMETER,
        {
            "name": "size",
            "in": "query",
            "required": False,
            "description": "Longest side in pixels: one of THUMBNAIL_SIZES (the first is the "
            "default); any other is a 400.",
            "schema": {"type": "integer", ENUM_SETTING: "thumbnail_sizes"},
        },
        {
            "name": "format",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(_PREFERENCE)},
        },
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "The `ETag` of an earlier answer: 304 if it still names this one.",
            "schema": {"type": "string"},
        },
    ),
    responses={
        200: {
            "description": "The thumbnail.",
            "headers": {
                "ETag": {"description": "Strong; names these bytes.", "schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string", "const": CACHE_CONTROL}},
            },
            "content": {FORMATS[name].content_type: {} for name in _PREFERENCE},
        },
        304: {"description": "`If-None-Match` named this thumbnail. No body."},
        400: error_response(
            "A size that THUMBNAIL_SIZES does not offer, or an unknown format.",
            "size: expected one of 256, 1024 (THUMBNAIL_SIZES), got '300'",
        ),
        404: error_response(
            "No stored file has this id, or it is not an image.",
            "no stored file has id '019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e'",
        ),
        422: error_response(
            "The stored image does not decode; remembered, so asking again renders nothing.",
            "the image cannot be rendered: VipsJpeg: Premature end of input file",
        ),
        503: error_response(
            "Too many thumbnails are waiting to be rendered; try again after `Retry-After`.",
            "too many thumbnails are being rendered; try again shortly",
        ),
    },
)
async def thumbnail(request: web.Request) -> web.StreamResponse:
    size, fmt = _size(request), _format(request)
    headers = {
        hdrs.CACHE_CONTROL: CACHE_CONTROL,
        hdrs.CONTENT_TYPE: fmt.content_type,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    if "format" not in request.query:
        headers[hdrs.VARY] = hdrs.ACCEPT
    thumbnailer = request.app[THUMBNAILER]
    file_key = request.match_info["id"]
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    # A hot thumbnail: from the thumbnailer's memory alone (no catalog query, no thread hop),
    # its record's owner compared with whose files the request may see. Not with a bucket:
    # the cache is this instance's, and another may have deleted the file.
    local = request.app[SETTINGS].storage == "local"
    if local:
        hot = thumbnailer.cached(file_key, size, fmt, sees=await visible_owner(request))
        if hot is not None:
            path = str(hot.path)
            if names_etag(if_none_match, hot.etag):
                if _still_there(path):  # deleted by another worker: ask the catalog
                    return _not_modified(headers, hot.etag)
            else:
                response = immutable_file_response(path, headers, hot.etag[1:-1])
                if response.status == 200:
                    return response
            thumbnailer.forget(file_key)
    record = await _record(request)
    etag = f'"{Thumbnailer.identity(record.sha256, size, fmt)}"'
    if names_etag(if_none_match, etag):
        return _not_modified(headers, etag)  # a client has it: no need to render it now
    found = None if local else thumbnailer.cached(file_key, size, fmt)  # no bucket download
    if found is None:
        source = await render_source(
            request.app[STORAGE], record.stored_name, thumbnailer.cache_dir
        )
        if source is None:
            raise NotFound("this storage cannot render thumbnails")
        found = await thumbnailer.get(
            source,
            file_key=record.id,
            content_hash=record.sha256,
            size=size,
            fmt=fmt,
            stored_name=record.stored_name,
            owner=record.owner,
        )
    return immutable_file_response(str(found.path), headers, found.etag[1:-1])


def _still_there(path: str) -> bool:
    """A page-cached ``stat``, on the event loop as :mod:`clustr_aio.web.file_response`'s."""
    return os.path.exists(path)


def _not_modified(headers: dict[str, str], etag: str) -> web.Response:
    response = web.Response(status=304, headers=headers)
    response.headers[hdrs.ETAG] = etag
    return response


def names_etag(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` names the (quoted) ``etag``: the weak comparison RFC 9110 asks for."""
    if not if_none_match:
        return False
    return etag in {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
