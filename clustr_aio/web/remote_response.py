"""The response for a stored file whose bytes are in a remote store (``S3_SERVE=proxy``):
streamed through, chunk by chunk, as the client takes them (``await write`` waits while the
client's socket is full, and the store's stream is read no faster), so memory stays at a chunk
per download whatever the file's size.

The store decides ranges and preconditions against its own ETag and Last-Modified (S3's GET
takes ``Range``, ``If-Match``, ``If-None-Match``, ``If-Modified-Since``,
``If-Unmodified-Since``; ``If-Range`` is checked by the storage first). Its 304 is passed on;
its 412 and 416 become JSON like every error here.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from clustr_aio.storage.base import Proxied, ReadConditions
from clustr_aio.web.file_response import CONTENT_SECURITY_POLICY, served_headers
from clustr_aio.web.responses import error_response

__all__ = ["remote_response"]

_ERROR_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}


def conditions_of(request: web.Request) -> ReadConditions:
    headers = request.headers
    return ReadConditions(
        range=headers.get(hdrs.RANGE),
        if_range=headers.get(hdrs.IF_RANGE),
        if_match=headers.get(hdrs.IF_MATCH),
        if_none_match=headers.get(hdrs.IF_NONE_MATCH),
        if_modified_since=headers.get(hdrs.IF_MODIFIED_SINCE),
        if_unmodified_since=headers.get(hdrs.IF_UNMODIFIED_SINCE),
    )


async def remote_response(request: web.Request, location: Proxied) -> web.StreamResponse:
    fetched = await location.source.fetch(location.name, conditions_of(request))
    if fetched.status == 404:
        return error_response(404, "Not Found", headers=_ERROR_HEADERS)
    if fetched.status == 412:
        return error_response(412, "Precondition Failed", headers=_ERROR_HEADERS)
    if fetched.status == 416:
        return error_response(416, "Range Not Satisfiable", headers=_ERROR_HEADERS)
    response = web.StreamResponse(status=fetched.status, headers=served_headers(location.name))
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    if fetched.etag is not None:
        response.headers[hdrs.ETAG] = fetched.etag
    if fetched.last_modified is not None:
        response.last_modified = fetched.last_modified
    if fetched.status == 304:
        return response
    if fetched.content_range is not None:
        response.headers[hdrs.CONTENT_RANGE] = fetched.content_range
    if fetched.size is not None:
        response.content_length = fetched.size
    try:
        await response.prepare(request)
        if request.method != hdrs.METH_HEAD and fetched.chunks is not None:
            async for chunk in fetched.chunks:
                await response.write(chunk)
        await response.write_eof()
    finally:
        if fetched.release is not None:
            fetched.release()
    return response
