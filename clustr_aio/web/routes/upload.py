"""``POST /api/upload``: multipart ``files`` parts in, the JSON envelope out."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import HttpVersion11, hdrs, web

from clustr_aio.auth.keys import Principal
from clustr_aio.auth.quota import QuotaMeter
from clustr_aio.catalog.base import FileRecord
from clustr_aio.domain.errors import (
    BadRequest,
    ClustrError,
    NoFilesUploaded,
    QuotaExceeded,
)
from clustr_aio.images.sources import render_source
from clustr_aio.images.thumbnails import DEFAULT_FORMAT, FORMATS, THUMBNAIL_TYPES
from clustr_aio.ingest.multipart import MultipartStream, file_parts, parse_boundary
from clustr_aio.ingest.pipeline import RefusedFile, StoredFile, ingest_batch, ingest_each
from clustr_aio.runtime.body_reader import body_chunks
from clustr_aio.web.base_url import client_address
from clustr_aio.web.guard import requires
from clustr_aio.web.keys import (
    CATALOG,
    GUARD,
    INGEST_POLICY,
    METRICS,
    RATE_STATE,
    SETTINGS,
    SPACE_REPORTER,
    STORAGE,
    THUMBNAILER,
    UPLOAD_SLOTS,
)
from clustr_aio.web.links import FileLinks, file_links
from clustr_aio.web.middlewares import admitted
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.registry import JSONObject
from clustr_aio.web.openapi.schemas import error_response as documented_error
from clustr_aio.web.openapi.schemas import json_response, ref
from clustr_aio.web.protection import body_errors, refuse_content_encoding
from clustr_aio.web.responses import clustr_error_response, json_answer

if TYPE_CHECKING:  # types only: the models module imports pydantic (see web/bodies.py)
    from clustr_aio.domain.models import (
        FileItem,
        RefusedItem,
        UploadedFile,
        UploadResponse,
        UploadResults,
    )

routes = web.RouteTableDef()


def upload_error(description: str, *examples: str) -> JSONObject:
    return documented_error(description, *examples, schema="UploadError")


async def refuse_early(request: web.Request) -> web.StreamResponse | None:
    """Expect handler: answer 413/406/400/507 instead of ``100 Continue`` when the headers
    alone show the upload will be refused, so the client never sends the body."""
    try:
        principal = await admitted(request)
        request.app[UPLOAD_SLOTS].check()
        await _check_request(request, principal)
    except ClustrError as error:
        request.app[METRICS].count_rejection(error)
        return clustr_error_response(error)
    await _continue(request)
    return None


async def _continue(request: web.Request) -> None:
    """What aiohttp's own expect handler does, which a route's replacing it must do too (its
    "Expect Header" documentation): ``100 Continue`` for HTTP/1.1, 417 for another expectation."""
    if request.version != HttpVersion11:
        return  # an HTTP/1.0 client sends its body without waiting for an interim answer
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim answer is not part of the response's bytes


@routes.post("/api/upload", expect_handler=refuse_early)
@requires("upload")
@operation(
    summary="Upload images",
    description="Send one or many files as `multipart/form-data` parts named `files` (`curl -F "
    "files=@a.jpg -F files=@b.png`). Each part is streamed to disk as it arrives and its bytes "
    "are checked against its extension, an image's structure and size as they pass (its "
    "metadata filtered by STRIP_METADATA, losslessly); only when every part is accepted are the "
    "files "
    "published, all at once: any error leaves nothing stored. With `Expect: 100-continue`, a "
    "request whose headers already break a limit is refused before its body is sent. Each "
    "stored file is recorded in the catalog (`GET /api/files/{id}`) before the answer. "
    "With `?atomic=false` each valid file is stored on its own, and a refused file's item "
    "says why (`original_filename`, `error`); errors of the request itself (malformed body, "
    "request too large, disk full) still refuse it all. A refusal that is about one file "
    "names it and its position (`file`, `index`).",
    tags=("upload",),
    parameters=(
        {
            "name": "atomic",
            "in": "query",
            "required": False,
            "description": "`true` (the default): all files or none. `false`: one item per "
            "file part, stored or refused on its own.",
            "schema": {"type": "string", "enum": ["true", "false"], "default": "true"},
        },
    ),
    request_body={
        "required": True,
        "content": {"multipart/form-data": {"schema": ref("UploadForm")}},
    },
    responses={
        200: json_response(
            "Every file was stored (`UploadResponse`); with `atomic=false`, every file was "
            "stored or refused on its own (`UploadResults`).",
            {"anyOf": [ref("UploadResponse"), ref("UploadResults")]},
        ),
        400: upload_error(
            "The body is not well-formed multipart: bad boundary, truncated part, nested "
            "multipart, or the client broke off.",
            "multipart/form-data Content-Type has no boundary parameter",
        ),
        406: upload_error(
            "No `files` part, or the body is not multipart/form-data at all.",
            "no files were uploaded: send them as multipart parts named 'files'",
            "request body is not multipart/form-data",
        ),
        413: upload_error(
            "A file is over MAX_FILE_SIZE, the body over MAX_REQUEST_SIZE, there are more "
            "than MAX_FILES files, or an image's header shows more than MAX_IMAGE_PIXELS.",
            "'bomb.png' is 30000 x 30000 pixels (900000000 in all), more than MAX_IMAGE_PIXELS"
            " (100000000)",
            "'huge.jpg' is larger than the limit of 52428800 bytes per file",
            "request body is larger than the limit of 10737418240 bytes",
            "too many files: at most 10000 per request",
        ),
        415: upload_error(
            "An extension not in ALLOWED_EXTENSIONS, an empty file, bytes that are not what "
            "the extension claims, an image whose structure does not hold together, or a body "
            "with a Content-Encoding (never inflated).",
            "'cut.jpg' is not a valid JPEG image: it ends inside its image data, before the EOI"
            " marker (truncated)",
            "'notes.txt': files of type .txt are not accepted; allowed: jpeg, jpg, png, webp",
            "'fake.png' is named .png but holds image/jpeg data; expected image/png",
            "'empty.jpg' is empty",
        ),
        409: upload_error(
            "DEDUPE=reject: a file's bytes are stored already.",
            "'beach.jpg' is stored already, as 'beach.jpg'",
        ),
        503: documented_error(
            "MAX_CONCURRENT_UPLOADS uploads are being received already, or the server is out "
            "of file descriptors; refused before the body is read, with Retry-After.",
            "too many uploads at once; retry shortly",
        ),
        507: upload_error(
            "The disk is full, or storing the upload would leave less than MIN_FREE_SPACE free,"
            " or (AUTH=keys) take the key owner's files over its quota (refused before the body"
            " when Content-Length tells); nothing was stored.",
            "not enough space left on the storage device",
            "not enough storage space left for an upload of 4294967296 bytes; try again later",
            "storage quota exceeded: owner 'alice' may store 10737418240 bytes and has 1024 left,"
            " not enough for 482113 bytes; nothing of this upload was kept",
        ),
    },
)
async def upload(request: web.Request) -> web.Response:
    principal = await admitted(request)
    with request.app[METRICS].track_upload() as tracked, request.app[UPLOAD_SLOTS].take():
        meter = _quota_meter(request, principal)
        boundary = await _check_request(request, principal, meter)
        policy = request.app[INGEST_POLICY]
        atomic = _atomic(request)
        with body_chunks(request) as read:  # the connection's, around aiohttp's copies
            body = policy.limits.counting(read)
            files = file_parts(MultipartStream(body, boundary), policy.field_name)
            if meter is not None:
                files = meter.metered(files)
            storage, catalog = request.app[STORAGE], request.app[CATALOG]
            owner = principal.owner
            try:
                with body_errors():
                    if atomic:
                        results: list[StoredFile | RefusedFile] = [
                            *await ingest_batch(files, storage, policy, catalog, owner=owner)
                        ]
                    else:
                        results = await ingest_each(files, storage, policy, catalog, owner=owner)
            except QuotaExceeded as error:
                _refused(request, principal, error)
                raise
            finally:
                tracked.received(body.bytes_read)
                if request.content_length is None:  # charged now what it could not be before
                    _charge_upload(request, principal, body.bytes_read - 1, debt=True)
                if meter is not None:  # the records are committed (or there are none): let go
                    await asyncio.shield(asyncio.ensure_future(meter.release()))
        stored = [r for r in results if isinstance(r, StoredFile)]
        tracked.stored([r for r in stored if not r.duplicate])
    await render_ahead(request, stored)
    urls = item_urls(request)
    if atomic:
        answer: UploadResponse = {
            "message": f"Successfully uploaded {len(stored)} files",
            "data": [upload_item(urls, item) for item in stored],
        }
        return json_answer(answer)
    results_answer: UploadResults = {
        "message": f"Uploaded {len(stored)} of {len(results)} files",
        "data": [
            upload_item(urls, r) if isinstance(r, StoredFile) else _refused_item(r) for r in results
        ],
    }
    return json_answer(results_answer)


def _atomic(request: web.Request) -> bool:
    value = request.query.get("atomic", "true")
    if value not in ("true", "false"):
        raise BadRequest(f"atomic: expected true or false, got {value!r}")
    return value == "true"


def _quota_meter(request: web.Request, principal: Principal) -> QuotaMeter | None:
    if principal.quota is None or principal.owner is None:
        return None
    return QuotaMeter(request.app[CATALOG], principal.owner, principal.quota)


def _charge_upload(request: web.Request, principal: Principal, size: int, *, debt: bool) -> None:
    """The upload-bytes rate limit: once before the body (the expect handler may have charged
    already), once after it when its length was unknown."""
    state = request.get(RATE_STATE)
    if state is None or (state.upload_charged and not debt):
        return
    state.upload_charged = True
    request.app[GUARD].charge_upload(principal, client_address(request), size, state, debt=debt)


async def _check_request(
    request: web.Request, principal: Principal, meter: QuotaMeter | None = None
) -> bytes:
    """What can be refused before reading the body: a Content-Encoding, its declared length,
    its content type, whether the storage has room for it (above MIN_FREE_SPACE), the upload
    rate, and the owner's quota."""
    refuse_content_encoding(request.headers)
    request.app[INGEST_POLICY].limits.check_declared_length(request.content_length)
    boundary = parse_boundary(request.headers.get(hdrs.CONTENT_TYPE))
    if request.content_length == 0:  # nothing sent at all: no files, not a malformed body
        raise NoFilesUploaded("no files were uploaded: the request body is empty")
    space = request.app.get(SPACE_REPORTER)
    if space is not None:
        await space.ensure_room(request.content_length)
    # Of unknown length: it needs a byte left in the bucket now, and is charged once read.
    _charge_upload(request, principal, request.content_length or 1, debt=False)
    meter = meter or _quota_meter(request, principal)
    if meter is not None:
        try:
            await meter.check_declared_length(request.content_length)
        except QuotaExceeded as error:
            _refused(request, principal, error)
            raise
    return boundary


def _refused(request: web.Request, principal: Principal, error: QuotaExceeded) -> None:
    request.app[GUARD].refused(error, principal, client_address(request))


class ItemUrls:
    """Where a file item's links point. The one place they are built: a preview URL, and a
    thumbnail URL per size, each signed with PUBLIC_FILES=false (:class:`FileLinks`).

    Unsigned URLs are a fixed prefix and the file's name or id: the prefixes are joined once
    per answer here, not once per item (a page of 100 asks for 400 URLs)."""

    __slots__ = ("_files", "_files_prefix", "_sizes", "_thumbnail_prefix", "links")

    def __init__(self, links: FileLinks, thumbnail_sizes: tuple[int, ...]) -> None:
        self.links = links
        self._sizes = tuple((str(size), f"size={size}") for size in thumbnail_sizes)
        """THUMBNAIL_SIZES, the first the default (whose URL has no ``size``): each one's key
        in ``thumbnails`` and its query."""
        signed = bool(links.secrets)
        self._files_prefix = None if signed else f"{links.base_url}{links.files_path}/"
        self._thumbnail_prefix = None if signed else f"{links.base_url}/api/files/"

    def preview_url(self, record: FileRecord) -> str:
        if self._files_prefix is None:
            return self.links.stored_file(record.stored_name)
        return self._files_prefix + quote(record.stored_name)

    def thumbnail_url(self, record: FileRecord, size: int | None = None) -> str:
        return self._thumbnail_url(record.id, "" if size is None else f"size={size}")

    def thumbnails(self, record: FileRecord) -> dict[str, str]:
        return {key: self._thumbnail_url(record.id, query) for key, query in self._sizes}

    def _thumbnail_url(self, record_id: str, query: str) -> str:
        if self._thumbnail_prefix is None:
            return self.links.url(f"/api/files/{record_id}/thumbnail", query)
        url = f"{self._thumbnail_prefix}{record_id}/thumbnail"
        return f"{url}?{query}" if query else url


def item_urls(request: web.Request) -> ItemUrls:
    """The links of this response's items: the host the client used, through a trusted proxy,
    unless PUBLIC_BASE_URL says otherwise."""
    return ItemUrls(file_links(request), request.app[SETTINGS].thumbnail_sizes)


def file_item(urls: ItemUrls, record: FileRecord) -> FileItem:
    """A stored file as the API shows it (``GET /api/files/{id}``, listings, and in upload
    answers): straight from its record, as every answer has one."""
    image = record.content_type in THUMBNAIL_TYPES
    return {
        "stored_filename": record.stored_name,
        "preview_url": urls.preview_url(record),
        "original_filename": record.original_name,
        "file_size": record.size,
        "content_type": record.content_type,
        "id": record.id,
        "sha256": record.sha256,
        "created_at": rfc3339(record.created_at),
        "width": record.width,
        "height": record.height,
        "orientation": record.orientation,
        "metadata_removed": record.metadata_removed,
        "thumbnail_url": urls.thumbnail_url(record) if image else None,
        "thumbnails": urls.thumbnails(record) if image else {},
    }


def upload_item(urls: ItemUrls, item: StoredFile) -> UploadedFile:
    return {**file_item(urls, item.record), "duplicate": item.duplicate}


def rfc3339(moment: datetime) -> str:
    """``2026-12-01T09:30:23.123Z``: UTC, milliseconds (the precision of the ids)."""
    # %-formatting of the fields, not isoformat (which formats the offset, to cut it off
    # again) nor strftime: a third of their time, and this runs once per item of an answer.
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 (faster than {:02d})
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond // 1000,
    )


def _refused_item(refused: RefusedFile) -> RefusedItem:
    error = refused.error
    return {
        "original_filename": refused.original_filename,
        "error": {"status": error.status, "detail": error.detail},
    }


async def render_ahead(request: web.Request, items: Sequence[StoredFile]) -> None:
    """``THUMBNAILS=eager``: queue every size of the new images' default-format thumbnails,
    behind every request's render. Queued once this handler has returned, so the upload's
    answer goes out first; nothing when the setting is ``lazy``. Also for the file a tus
    upload's last request completed."""
    if request.app[SETTINGS].thumbnails != "eager":
        return
    thumbnailer, sizes = request.app[THUMBNAILER], request.app[SETTINGS].thumbnail_sizes
    loop = asyncio.get_running_loop()
    fmt = FORMATS[DEFAULT_FORMAT]
    for item in items:
        if item.duplicate or item.content_type not in THUMBNAIL_TYPES:
            continue
        name = item.stored_filename
        source = await render_source(request.app[STORAGE], name, thumbnailer.cache_dir)
        if source is None:
            continue
        for size in sizes:
            prefetch = functools.partial(
                thumbnailer.prefetch,
                source,
                file_key=item.id,
                content_hash=item.sha256,
                size=size,
                fmt=fmt,
                stored_name=name,
            )
            loop.call_soon(prefetch)
