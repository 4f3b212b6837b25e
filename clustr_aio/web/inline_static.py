"""The static route for the stored files: aiohttp's ``add_static``, made cheap per request.

A GET of a stored photo is the request the front end sends most. ``add_static`` costs it two
thread-pool round trips (resolving the path, then stat-and-open), a third to close the file,
and asyncio's ``loop.sendfile``. Those cost far more than the page-cached lookups and the copy
they wrap (see :mod:`clustr_aio.web.sendfile`). This module makes the lookups on the event loop,
as nginx does, and takes a fast path for the common request:

- **fast path**, for a plain name (one path segment) and no ``Range`` or ``If-*`` header:
  one ``open(O_NOFOLLOW)`` and ``fstat``, the headers aiohttp would give a 200 (content type
  from a per-extension cache), and :func:`~clustr_aio.web.sendfile.send_head_and_file`;
- **slow path**, for everything else (ranges, preconditions, symlinks, directories, nested
  paths): aiohttp's ``FileResponse`` and its policies (206/416, 304/412, symlinks, 403 for
  non-files), with its filesystem calls made inline and the body sent by the same function.

With both, ``wrk -t1 -c16 -d5s`` GETs of a 498 KB JPEG went from 3,000-3,250 to 5,500-5,830
req/s on this 2-core machine (0.31 to 0.17-0.18 ms of server CPU each, three runs each);
aiohttp's stock ``add_static`` did 1,500-1,650.

What is served: regular files directly in the folder, under their own names. Names starting
with a dot are never served (temporary files live in ``.incoming``), nor is anything in a
sub-folder, nor a symbolic link (even to a file in the folder): a 404, raised before any
response starts, so that it becomes JSON like any other error. The slow path's own refusals
(412, 416) are JSON too, and an ``If-Range`` naming another entity tag gets the whole file (a
200, RFC 9110 §13.1.5), not the range. Pre-compressed siblings (``a.jpg.gz`` for
``Accept-Encoding: gzip``) are never looked for: a stored file is served as it was stored.

The cost: a cold ``stat`` on a slow disk stalls the loop for its duration. This relies on
aiohttp internals (``FileResponse._make_response`` and friends, the writer's unsent head),
which is why aiohttp is pinned; tests/http/test_static.py covers the behaviour.
"""

from __future__ import annotations

import functools
import io
import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.web_fileresponse import CONTENT_TYPES, FALLBACK_CONTENT_TYPE, _FileResponseResult
from aiohttp.web_request import BaseRequest

from clustr_aio.web.sendfile import send_head_and_file

__all__ = ["InlineFileResponse", "InlineStaticResource", "StoredFileResponse", "add_inline_static"]

# The headers that take a request off the fast path: aiohttp's FileResponse answers them.
_SLOW_PATH_HEADERS: Final = (
    hdrs.RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)
# O_NOFOLLOW: a symlink takes the slow path and its policy. O_NONBLOCK: opening a FIFO
# placed in the folder by hand must not block the loop (it changes nothing for a file).
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class InlineFileResponse(web.FileResponse):
    """``FileResponse`` with its filesystem calls on the event loop, and the body sent by
    :func:`~clustr_aio.web.sendfile.send_head_and_file`: the slow path."""

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp's FileResponse.prepare minus the thread-pool round trips; "" for
        # Accept-Encoding: pre-compressed siblings are never served.
        try:
            result, fobj, st, _ = self._make_response(request, "")
        except PermissionError:
            return await self._refuse(request, web.HTTPForbidden.status_code)
        except OSError:
            return await self._refuse(request, web.HTTPNotFound.status_code)
        if result is _FileResponseResult.NOT_ACCEPTABLE:  # not a regular file
            return await self._refuse(request, web.HTTPForbidden.status_code)
        if result is _FileResponseResult.PRE_CONDITION_FAILED:
            return await self._precondition_failed(request)
        if result is _FileResponseResult.NOT_MODIFIED:
            etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
            return await self._not_modified(request, etag, st.st_mtime)
        assert fobj is not None
        with fobj:
            return await self._prepare_open_file(request, fobj, st, None)

    async def _sendfile(
        self, request: BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        return await _prepare_and_send(self, request, fobj, offset, count)

    async def _prepare_open_file(
        self, request: BaseRequest, fobj: Any, st: os.stat_result, file_encoding: str | None
    ) -> AbstractStreamWriter | None:
        if hdrs.RANGE in request.headers:
            if _if_range_fails(request, f'"{st.st_mtime_ns:x}-{st.st_size:x}"'):
                # aiohttp reads If-Range only as a date, and an entity tag as no If-Range at
                # all: the range would be sent from a file that may have changed since.
                headers = request.headers.copy()
                del headers[hdrs.RANGE]
                request = request.clone(headers=headers)
            elif _range_unsatisfiable(request, st.st_size):
                self.headers[hdrs.CONTENT_RANGE] = f"bytes */{st.st_size}"
                return await self._refuse(request, 416, "Range Not Satisfiable")
        return await super()._prepare_open_file(request, fobj, st, file_encoding)

    async def _precondition_failed(self, request: BaseRequest) -> AbstractStreamWriter | None:
        return await self._refuse(request, 412, "Precondition Failed")

    async def _refuse(
        self, request: BaseRequest, status: int, detail: str | None = None
    ) -> AbstractStreamWriter | None:
        """A ``{"detail"}`` answer from within ``prepare`` (the JSON middleware is behind us)."""
        self.set_status(status)
        body = json.dumps({"detail": detail or self.reason}).encode()
        self.content_type = "application/json"
        self.content_length = len(body)
        writer = await web.StreamResponse.prepare(self, request)
        if request.method != hdrs.METH_HEAD:
            await self.write(body)
        await self.write_eof()
        return writer


class StoredFileResponse(web.StreamResponse):
    """The fast path's answer: 200 with the whole of a regular file, already open. Its headers
    are those aiohttp's ``FileResponse`` gives a 200 (tests/http/test_static.py compares)."""

    def __init__(self, file: io.FileIO, st: os.stat_result, content_type: str) -> None:
        super().__init__()
        self._file = file
        self.headers[hdrs.CONTENT_TYPE] = content_type
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        self.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        self.last_modified = st.st_mtime
        self.content_length = st.st_size

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        with self._file:
            size = self.content_length or 0
            if request.method == hdrs.METH_HEAD or not size:
                return await super().prepare(request)  # write_eof sends the head alone
            return await _prepare_and_send(self, request, self._file, 0, size)


async def _prepare_and_send(
    response: web.StreamResponse, request: BaseRequest, file: IO[Any], offset: int, count: int
) -> AbstractStreamWriter:
    """``StreamResponse.prepare``, then its head and ``count`` bytes of ``file`` from
    ``offset`` through :func:`~clustr_aio.web.sendfile.send_head_and_file`."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("Connection lost")
    response._send_headers_immediately = False  # to go out with the file's first bytes
    writer = await web.StreamResponse.prepare(response, request)
    assert isinstance(writer, StreamWriter)
    await send_head_and_file(transport, _take_unsent_head(writer), file, offset, count)
    writer.output_size += count  # as aiohttp's own write path counts it, for the access log
    await web.StreamResponse.write_eof(response)
    return writer


def _take_unsent_head(writer: StreamWriter) -> bytes:
    """The status line and headers that ``prepare`` serialised but did not send, which the
    writer then considers sent."""
    head = writer._headers_buf
    assert head is not None
    assert not writer._headers_written
    writer._headers_buf = None
    writer._headers_written = True
    return head


class InlineStaticResource(web.StaticResource):
    """``StaticResource`` that looks the file up on the event loop and answers with
    :class:`InlineFileResponse`; see the module's documentation."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return self._response_for(request, request.match_info["filename"])

    def _response_for(self, request: web.Request, filename: str) -> web.StreamResponse:
        # Stored names are plain: nothing in a sub-folder is served, nor a dot-name.
        if "/" in filename or filename.startswith("."):
            raise web.HTTPNotFound()
        if "\0" not in filename:
            response = self._fast_response(request, filename)
            if response is not None:
                return response
        path = self._directory.joinpath(filename)
        # Refusals now, as JSON errors; FileResponse would answer them with an empty body.
        try:
            mode = path.lstat().st_mode
        except (OSError, ValueError):  # missing, or a name the system refuses (a NUL byte)
            raise web.HTTPNotFound() from None
        if stat.S_ISLNK(mode):  # placed by hand: never followed, even to a file in the folder
            raise web.HTTPNotFound()
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO, a socket, a device
            raise web.HTTPForbidden()
        response = self._resolve_path_to_response(path)
        if type(response) is web.FileResponse:
            return InlineFileResponse(response._path)
        return response

    def _fast_response(self, request: web.Request, filename: str) -> web.StreamResponse | None:
        """The response for a plain name, or None when the slow path must decide."""
        headers = request.headers
        if any(header in headers for header in _SLOW_PATH_HEADERS):
            return None
        path = os.path.join(self._directory, filename)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        except OSError:  # a symlink (ELOOP), no permission, ...
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a directory, a FIFO...: as aiohttp would say
                raise web.HTTPForbidden()
            file = io.FileIO(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return StoredFileResponse(file, st, _content_type(os.path.splitext(filename)[1]))


def _if_range_fails(request: BaseRequest, etag: str) -> bool:
    """Whether an ``If-Range`` entity tag (a date is aiohttp's to judge) is not the file's:
    only a strong, equal tag lets the range through."""
    value = request.headers.get(hdrs.IF_RANGE)
    if value is None or request.if_range is not None:
        return False
    return value.strip() != etag


def _range_unsatisfiable(request: BaseRequest, size: int) -> bool:
    """aiohttp's test for a 416 (``FileResponse._prepare_open_file``), made before it."""
    try:
        requested = request.http_range
    except ValueError:
        return True
    start: int | None = requested.start
    if start is None or (start < 0 and requested.stop is None):
        return False
    return start >= size


@functools.lru_cache(maxsize=256)
def _content_type(extension: str) -> str:
    """aiohttp's guess for a file name ending in ``extension``: its table has no encodings, so
    the guess depends on the last extension alone."""
    return CONTENT_TYPES.guess_type("file" + extension)[0] or FALLBACK_CONTENT_TYPE


def add_inline_static(
    router: web.UrlDispatcher, prefix: str, folder: Path, *, name: str
) -> InlineStaticResource:
    """``router.add_static(prefix, folder, name=name)`` with :class:`InlineStaticResource`;
    no directory index, symlinks not followed."""
    resource = InlineStaticResource(
        prefix.rstrip("/"), folder, name=name, show_index=False, follow_symlinks=False
    )
    router.register_resource(resource)
    return resource
