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
from clustr_aio.keys import INGEST_POLICY, SETTINGS, STORAGE
from clustr_aio.responses import error_response

routes = web.RouteTableDef()


async def refuse_early(request: web.Request) -> web.StreamResponse | None:
    """Expect handler: answer 413/406/400 instead of ``100 Continue`` when the headers alone
    show the upload will be refused, so the client never sends the body."""
    try:
        _check_headers(request)
    except ClustrError as error:
        return error_response(error.status, error.detail)
    await _default_expect_handler(request)
    return None


@routes.post("/api/upload", expect_handler=refuse_early)
async def upload(request: web.Request) -> web.Response:
    boundary = _check_headers(request)
    limits = request.app[INGEST_POLICY].limits
    parts = MultipartStream(limits.counting(request.content.readany), boundary)
    try:
        stored = await ingest_multipart(parts, request.app[STORAGE], request.app[INGEST_POLICY])
    except ConnectionError as error:
        raise ClientDisconnected() from error
    except HttpProcessingError as error:  # e.g. broken chunked encoding or a short body
        raise MalformedUpload(f"malformed request body: {error.message}") from None
    return web.json_response(
        {
            "message": f"Successfully uploaded {len(stored)} files",
            "data": [_envelope_item(request, item) for item in stored],
        }
    )


def _check_headers(request: web.Request) -> bytes:
    request.app[INGEST_POLICY].limits.check_declared_length(request.content_length)
    return parse_boundary(request.headers.get(hdrs.CONTENT_TYPE))


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
