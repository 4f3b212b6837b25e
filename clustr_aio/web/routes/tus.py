"""``/api/tus/``: resumable uploads (tus 1.0.0), translated to and from :mod:`clustr_aio.tus`.

Thin: each handler hands the request's headers, body stream and principal (AUTH=keys: its
key's owner and quota) to the :class:`~clustr_aio.tus.handler.TusHandler` and writes its answer
back. The requests that carry a file's bytes (creation, PATCH) count in the upload metrics as a
multipart upload does, and a file one of them completes is rendered ahead (THUMBNAILS=eager).
Errors are :class:`~clustr_aio.domain.errors.ClustrError`s that become ``{"detail"}`` responses
in the one middleware, like every other route's; :func:`tus_headers` adds ``Tus-Resumable``
to every answer under ``/api/tus/``, errors included, as the protocol asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

from aiohttp import hdrs, web

from clustr_aio.compat import replace_route_handler
from clustr_aio.domain.errors import NotFound, QuotaExceeded
from clustr_aio.ingest.multipart import ReadChunk, Window
from clustr_aio.runtime.body_reader import body_chunks
from clustr_aio.storage.base import Buffer
from clustr_aio.tus.handler import TusAnswer, TusHandler, TusRequest
from clustr_aio.tus.headers import (
    CHECKSUM_ALGORITHMS,
    EXTENSIONS,
    OFFSET_OCTET_STREAM,
    PARTIAL_UPLOAD,
    TUS_VERSION,
)
from clustr_aio.web.base_url import client_address, request_base_url
from clustr_aio.web.guard import requires
from clustr_aio.web.keys import GUARD, METRICS, TUS, UPLOAD_SLOTS
from clustr_aio.web.middlewares import admitted
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.registry import JSONObject
from clustr_aio.web.openapi.schemas import error_response
from clustr_aio.web.protection import body_errors, refuse_content_encoding
from clustr_aio.web.routes.upload import render_ahead
from clustr_aio.web.trailers import body_trailers, reads_trailers

__all__ = ["PREFIX", "add_discovery", "routes", "tus_headers"]

PREFIX: Final = "/api/tus/"
routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tus(request: web.Request) -> TusHandler:
    tus = request.app.get(TUS)
    if tus is None:
        raise NotFound("this server's storage does not keep resumable uploads")
    return tus


class _Body:
    """The request's body as the handler reads it, its bytes counted (the upload metrics).

    ``read`` is the connection's body reader where it took the body (a large ``PATCH``:
    :func:`~clustr_aio.runtime.body_reader.body_chunks`, the multipart route's reader, whose
    blocks the kernel copies into once), else aiohttp's ``readany``. A window of a reused block
    is handed on as a ``memoryview`` of it, which keeps the block out of use for as long as
    anything (the pending write, the hasher, the live run) holds it."""

    def __init__(self, read: ReadChunk) -> None:
        self._read = read
        self.bytes_read = 0

    async def chunks(self) -> AsyncIterator[Buffer]:
        read = self._read
        with body_errors():
            while True:
                chunk = await read()
                if not len(chunk):
                    return
                self.bytes_read += len(chunk)
                if isinstance(chunk, Window):
                    yield memoryview(chunk.buffer)[chunk.start : chunk.stop]
                else:
                    yield chunk


async def _request(request: web.Request, body: _Body | None = None) -> TusRequest:
    base = request_base_url(request)
    return TusRequest(
        headers=request.headers,
        body=(body or _Body(request.content.readany)).chunks(),
        content_length=request.content_length,
        endpoint=base + PREFIX.rstrip("/"),
        files_url=base + "/api/files",
        principal=await admitted(request),
        trailers=_trailers(request),
    )


def _trailers(request: web.Request) -> Callable[[], Mapping[str, str] | None] | None:
    """The body's trailer fields, for checksum-trailer (see :mod:`clustr_aio.web.trailers`):
    none without a ``Trailer`` field (the connection keeps none then; asking is a runtime
    protocol's ``isinstance``, which TB's profile showed)."""
    if hdrs.TRAILER not in request.headers:
        return None
    trailers = body_trailers(request)
    if trailers is None:
        return None
    return lambda: trailers.fields


Receive = Callable[[TusHandler, TusRequest], Awaitable[TusAnswer]]


async def _receiving(request: web.Request, receive: Receive) -> web.Response:
    """A request that may carry a file's bytes (creation, PATCH), as a multipart upload is:
    in the upload metrics (in flight, bytes received, files stored, refusals), a quota refusal
    logged by key name, the file it completes rendered ahead."""
    tus = _tus(request)
    metrics = request.app[METRICS]
    with metrics.track_upload() as tracked, request.app[UPLOAD_SLOTS].take():
        refuse_content_encoding(request.headers)
        with body_chunks(request) as read:  # the connection's, around aiohttp's copies
            body = _Body(read)
            tus_request = await _request(request, body)
            try:
                answer = await receive(tus, tus_request)
            except QuotaExceeded as error:
                address = client_address(request)
                request.app[GUARD].refused(error, tus_request.principal, address)
                raise
            finally:
                tracked.received(body.bytes_read)
        tracked.stored([f for f in answer.published if not f.duplicate])
    await render_ahead(request, answer.published)
    return _response(answer)


def _response(answer: TusAnswer) -> web.Response:
    return web.Response(status=answer.status, headers=answer.headers)


async def tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: ``Tus-Resumable`` on every answer under /api/tus/."""
    if request.path.startswith(PREFIX):
        response.headers["Tus-Resumable"] = TUS_VERSION


# -- documentation ---------------------------------------------------------------------------


def _header(name: str, description: str, *, required: bool = False, **schema: object) -> JSONObject:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_VERSION = _header(
    "Tus-Resumable",
    "The protocol version: 1.0.0 (required, unless the request speaks the IETF draft).",
    const=TUS_VERSION,
)
_DRAFT = _header(
    "Upload-Draft-Interop-Version",
    "6: the IETF Resumable Uploads draft as tus-js-client's `ietf-draft-05` speaks it, on the "
    "same uploads; bodies are then `application/partial-upload`, and `Upload-Complete: ?1` "
    "says a request ends the upload (its length, if none was given).",
    const="6",
)
_COMPLETE = _header("Upload-Complete", "The IETF draft: `?1` on the last request, else `?0`.")
_ID: Final[JSONObject] = {
    "name": "upload_id",
    "in": "path",
    "required": True,
    "description": "The upload's id, the last segment of its `Location`.",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "example": "0193c5a4e1f27c2a9d3b4e5f60718293",
}


def _headers(**described: str) -> JSONObject:
    return {
        name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
        for name, text in described.items()
    }


_COMMON_ERRORS: Final[dict[int, JSONObject]] = {
    400: error_response(
        "A tus header is malformed or missing (Upload-Length, Upload-Metadata, "
        "Upload-Checksum's algorithm…).",
        "Upload-Metadata: filename is required",
    ),
    412: {
        **error_response("Tus-Resumable is missing or not 1.0.0.", "no Tus-Resumable header"),
        "headers": _headers(Tus_Version="The versions this server speaks: 1.0.0."),
    },
}
_GONE: Final = {
    404: error_response(
        "No upload has this id (or it expired and was swept, or, AUTH=keys, it is another "
        "owner's).",
        "no upload has this id",
    ),
    410: error_response(
        "The upload expired (TUS_EXPIRY after its last byte).", "this upload has expired"
    ),
}
_FILE_HEADERS: Final = _headers(
    Clustr_File_Id="Once the upload is complete and stored: the file's id in the catalog.",
    Clustr_File_Url="…and where its record is (`GET /api/files/{id}`).",
)
_REFUSED: Final[dict[int, JSONObject]] = {
    413: error_response(
        "Upload-Length (or the bytes sent) over MAX_FILE_SIZE.",
        "the upload is larger than the limit of 52428800 bytes per file",
        schema="UploadError",
    ),
    415: error_response(
        "The body is not application/offset+octet-stream, or the file is refused as a "
        "multipart part would be: extension, magic bytes, image structure (the upload is "
        "then terminated).",
        "'notes.txt': files of type .txt are not accepted; allowed: jpeg, jpg, png, webp",
        schema="UploadError",
    ),
    409: error_response(
        "Upload-Offset is not the upload's (HEAD, then resume from there), or DEDUPE=reject "
        "refused the completed file.",
        "Upload-Offset is 0, the upload's offset 5242880",
        schema="UploadError",
    ),
    507: error_response(
        "The disk is full, or (AUTH=keys) the upload would take its key owner's files over the "
        "key's quota: checked at creation from Upload-Length (nothing is made), else as the "
        "bytes arrive (the request's bytes are not kept).",
        "not enough space left on the storage device",
        "storage quota exceeded: owner 'alice' may store 10737418240 bytes and has 1024 left,"
        " not enough for 482113 bytes; nothing of this upload was kept",
    ),
}


# -- routes ----------------------------------------------------------------------------------


@routes.post(PREFIX)
@requires("upload")
@operation(
    summary="Create a resumable upload (tus)",
    description="tus 1.0.0 creation, with creation-with-upload (a first chunk as the body, "
    f"`Content-Type: {OFFSET_OCTET_STREAM}`), creation-defer-length and concatenation "
    "(`Upload-Concat: partial`, or `final;<upload URLs>`). `Upload-Metadata` must hold a "
    "`filename`, checked as a multipart part's name is. Any tus client works: tus-js-client, "
    "Uppy, tuspy.",
    tags=("upload",),
    parameters=(
        _VERSION,
        _header("Upload-Length", "The file's size in bytes.", pattern="^[0-9]{1,19}$"),
        _header("Upload-Defer-Length", "1: the size comes with a later PATCH.", const="1"),
        _header(
            "Upload-Metadata",
            "`key base64,…`: `filename` required.",
            example="filename cGhvdG8uanBn",
        ),
        _header("Upload-Concat", "`partial`, or `final;<URL> <URL>…`."),
        _DRAFT,
        _COMPLETE,
    ),
    responses={
        201: {
            "description": "Created; `Location` is the upload's URL.",
            "headers": {
                **_headers(
                    Location="The upload's URL.",
                    Upload_Expires="When it expires.",
                    Upload_Offset="With a body: bytes received.",
                ),
                **_FILE_HEADERS,
            },
        },
        **_COMMON_ERRORS,
        **_REFUSED,
    },
)
async def create(request: web.Request) -> web.Response:
    return await _receiving(request, TusHandler.create)


@routes.head(PREFIX + "{upload_id}")
@requires("upload")
@operation(
    summary="Offset of a resumable upload (tus)",
    description="Where to resume: `Upload-Offset`, with `Upload-Length` (or "
    "`Upload-Defer-Length`), `Upload-Metadata`, `Upload-Concat`, `Upload-Expires`; once "
    "complete, `Clustr-File-Id` and `Clustr-File-Url`. Never cached. Never waits for a PATCH "
    "that holds the upload.",
    tags=("upload",),
    parameters=(_ID, _VERSION, _DRAFT),
    responses={
        200: {
            "description": "The upload's state.",
            "headers": {
                **_headers(
                    Upload_Offset="Bytes received.",
                    Upload_Length="The file's size.",
                    Upload_Metadata="As sent, re-encoded.",
                    Upload_Expires="When it expires.",
                    Cache_Control="no-store",
                ),
                **_FILE_HEADERS,
            },
        },
        **_COMMON_ERRORS,
        **_GONE,
    },
)
async def head(request: web.Request) -> web.Response:
    tus = _tus(request)
    return _response(await tus.head(request.match_info["upload_id"], await _request(request)))


@routes.patch(PREFIX + "{upload_id}")
@requires("upload")
@operation(
    summary="Append to a resumable upload (tus)",
    description=f"A chunk at `Upload-Offset`, as `{OFFSET_OCTET_STREAM}`. With "
    "`Upload-Checksum: <sha1|sha256|md5> <base64>` a chunk that does not match is discarded "
    "(460); the checksum may instead come as a trailer of a chunked body, announced by "
    "`Trailer: Upload-Checksum` (checksum-trailer). Bytes received before a connection broke "
    "are kept. Another PATCH of the same upload in flight, in any worker: 423. The completing "
    "PATCH publishes the file through the upload pipeline and answers with `Clustr-File-Id`.",
    tags=("upload",),
    parameters=(
        _ID,
        _VERSION,
        _header(
            "Upload-Offset", "Where this chunk starts.", required=True, pattern="^[0-9]{1,19}$"
        ),
        _header("Upload-Length", "creation-defer-length: the size, once."),
        _header("Upload-Checksum", "`sha1 <base64 digest>` (or sha256, md5) of this chunk."),
        _header(
            "Trailer",
            "`Upload-Checksum`: the checksum comes as a trailer field of the chunked body "
            "(checksum-trailer), verified as the header's is.",
        ),
        _DRAFT,
        _COMPLETE,
    ),
    request_body={
        "required": True,
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in (OFFSET_OCTET_STREAM, PARTIAL_UPLOAD)
        },
    },
    responses={
        204: {
            "description": "Appended.",
            "headers": {
                **_headers(Upload_Offset="The new offset.", Upload_Expires="When it expires."),
                **_FILE_HEADERS,
            },
        },
        **_COMMON_ERRORS,
        **_GONE,
        **_REFUSED,
        403: error_response(
            "A final upload (concatenation) takes no PATCH.",
            "a final upload's bytes are its parts': PATCH those",
        ),
        423: error_response(
            "Another request is writing to this upload.",
            "another request is writing to this upload; retry once it has ended",
        ),
        460: error_response(
            "The chunk's checksum does not match; it was discarded.",
            "the chunk's sha1 is not its Upload-Checksum; it was discarded",
        ),
    },
)
async def patch(request: web.Request) -> web.Response:
    upload_id = request.match_info["upload_id"]
    return await _receiving(request, lambda tus, sent: tus.patch(upload_id, sent))


@routes.delete(PREFIX + "{upload_id}")
@requires("upload")
@operation(
    summary="Terminate a resumable upload (tus)",
    description="Its bytes and state are removed; a stored file it became stays (delete that "
    "with `DELETE /api/files/{id}`).",
    tags=("upload",),
    parameters=(_ID, _VERSION),
    responses={
        204: {"description": "Terminated."},
        **_COMMON_ERRORS,
        404: _GONE[404],
        423: error_response(
            "A PATCH is writing to this upload.",
            "another request is writing to this upload; retry once it has ended",
        ),
    },
)
async def terminate(request: web.Request) -> web.Response:
    tus = _tus(request)
    return _response(await tus.terminate(request.match_info["upload_id"], await _request(request)))


_METHOD_OVERRIDES: Final = {"PATCH": patch, "DELETE": terminate, "HEAD": head}


@routes.post(PREFIX + "{upload_id}")
@requires("upload")
@operation(
    summary="Method override (tus)",
    description="For clients that can only POST: `X-HTTP-Method-Override: PATCH` (or DELETE, "
    "HEAD) makes this request that method.",
    tags=("upload",),
    parameters=(
        _ID,
        _header(
            "X-HTTP-Method-Override",
            "PATCH, DELETE or HEAD.",
            required=True,
            enum=list(_METHOD_OVERRIDES),
        ),
    ),
    responses={
        200: {"description": "As HEAD."},
        204: {"description": "As PATCH or DELETE."},
        405: error_response(
            "No or another override.", "X-HTTP-Method-Override: expected PATCH, DELETE or HEAD"
        ),
    },
)
async def method_override(request: web.Request) -> web.StreamResponse:
    handler = _METHOD_OVERRIDES.get(request.headers.get("X-HTTP-Method-Override", "").upper())
    if handler is None:
        raise web.HTTPMethodNotAllowed(
            "POST",
            list(_METHOD_OVERRIDES),
            text="X-HTTP-Method-Override: expected PATCH, DELETE or HEAD",
        )
    return await handler(request)


def _discovery_doc(*parameters: JSONObject) -> Callable[[Handler], Handler]:
    return operation(
        parameters=parameters,
        summary="What this tus server supports",
        description="tus discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size` "
        "(MAX_FILE_SIZE), `Tus-Checksum-Algorithm`. A CORS preflight (with "
        "`Access-Control-Request-Method`) is answered as one.",
        tags=("upload",),
        responses={
            204: {
                "description": f"Extensions: {', '.join(EXTENSIONS)}; checksums: "
                f"{', '.join(CHECKSUM_ALGORITHMS)}.",
                "headers": _headers(
                    Tus_Version="1.0.0",
                    Tus_Extension="Comma-separated.",
                    Tus_Max_Size="Bytes.",
                    Tus_Checksum_Algorithm="Comma-separated.",
                ),
            }
        },
    )


def add_discovery(app: web.Application) -> None:
    """Serve tus ``OPTIONS`` on the routes' own OPTIONS (the ones aiohttp-cors added for
    preflights, which it keeps answering): call once CORS is set up."""
    for resource in app.router.resources():
        if not resource.canonical.startswith(PREFIX):
            continue
        endpoint = resource.canonical == PREFIX
        name = "discover_tus" if endpoint else "discover_tus_upload"
        document = _discovery_doc() if endpoint else _discovery_doc(_ID)
        for route in resource:
            if route.method == hdrs.METH_OPTIONS:
                replace_route_handler(route, document(_discovery_or(route.handler, name)))


def _discovery_or(preflight: Handler, name: str) -> Handler:
    async def discovery(request: web.Request) -> web.StreamResponse:
        if hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            return await preflight(request)
        return _response(_tus(request).options(trailers=reads_trailers(request)))

    discovery.__name__ = name  # its operationId
    return discovery
