"""``POST /api/upload``: multipart ``files`` parts in, the JSON envelope out."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

# aiohttp exposes no public "send 100 Continue"; its default expect handler is that, and stable.
from aiohttp.web_urldispatcher import _default_expect_handler

from clustr_aio.errors import ClientDisconnected, ClustrError, MalformedUpload
from clustr_aio.ingest.multipart import MultipartStream, parse_boundary
from clustr_aio.ingest.pipeline import StoredFile, ingest_multipart
from clustr_aio.keys import INGEST_POLICY, METRICS, SETTINGS, STORAGE
from clustr_aio.responses import error_response
from clustr_aio.storage.base import SpaceReporting

routes = web.RouteTableDef()


async def refuse_early(request: web.Request) -> web.StreamResponse | None:
    """Expect handler: answer 413/406/400/507 instead of ``100 Continue`` when the headers
    alone show the upload will be refused, so the client never sends the body."""
    try:
        await _check_request(request)
    except ClustrError as error:
        request.app[METRICS].count_rejection(error)
        return error_response(error.status, error.detail)
    await _default_expect_handler(request)
    return None


@routes.post("/api/upload", expect_handler=refuse_early)
async def upload(request: web.Request) -> web.Response:
    with request.app[METRICS].track_upload() as tracked:
        boundary = await _check_request(request)
        body = request.app[INGEST_POLICY].limits.counting(request.content.readany)
        parts = MultipartStream(body, boundary)
        try:
            stored = await ingest_multipart(parts, request.app[STORAGE], request.app[INGEST_POLICY])
        except ConnectionError as error:
            raise ClientDisconnected() from error
        except HttpProcessingError as error:  # e.g. broken chunked encoding or a short body
            raise MalformedUpload(f"malformed request body: {error.message}") from None
        finally:
            tracked.received(body.bytes_read)
        tracked.stored(stored)
    return web.json_response(
        {
            "message": f"Successfully uploaded {len(stored)} files",
            "data": [_envelope_item(request, item) for item in stored],
        }
    )


async def _check_request(request: web.Request) -> bytes:
    """What can be refused before reading the body: its declared length, its content type,
    and whether the storage has room for it (above MIN_FREE_SPACE)."""
    request.app[INGEST_POLICY].limits.check_declared_length(request.content_length)
    boundary = parse_boundary(request.headers.get(hdrs.CONTENT_TYPE))
    storage = request.app[STORAGE]
    if isinstance(storage, SpaceReporting):
        await storage.ensure_room(request.content_length)
    return boundary


def _envelope_item(request: web.Request, item: StoredFile) -> dict[str, object]:
    settings = request.app[SETTINGS]
    url_path = f"{settings.upload_url_path}/{quote(item.stored_filename)}"
    return {
        "stored_filename": item.stored_filename,
        "preview_url": settings.base_url + url_path,
        "original_filename": item.original_filename,
        "file_size": item.file_size,
        "content_type": item.content_type,
    }
