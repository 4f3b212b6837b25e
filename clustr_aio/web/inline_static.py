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

Names starting with a dot are never served (temporary files live in ``.incoming``), and a
missing file is a 404 raised before any response starts, so that it becomes JSON like any
other error. Pre-compressed siblings (``a.jpg.gz`` for ``Accept-Encoding: gzip``) are never
looked for: a stored file is served as it was stored.

The cost: a cold ``stat`` on a slow disk stalls the loop for its duration. This relies on
aiohttp internals (``FileResponse``'s steps, the writer's unsent head, reached through
:mod:`clustr_aio.compat`), which is why aiohttp is pinned; tests/http/test_static.py covers the
behaviour.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from clustr_aio import compat
from clustr_aio.compat import FileResponseResult
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


class InlineFileResponse(compat.FileResponseBodySender):
    """``FileResponse`` with its filesystem calls on the event loop, and the body sent by
    :func:`~clustr_aio.web.sendfile.send_head_and_file`: the slow path."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp's FileResponse.prepare minus the thread-pool round trips; "" for
        # Accept-Encoding: pre-compressed siblings are never served.
        try:
            result, fobj, st = compat.plan_file_response(self, request)
        except PermissionError:
            return await self._refuse(request, web.HTTPForbidden.status_code)
        except OSError:
            return await self._refuse(request, web.HTTPNotFound.status_code)
        if result is FileResponseResult.NOT_ACCEPTABLE:  # not a regular file
            return await self._refuse(request, web.HTTPForbidden.status_code)
        if result is FileResponseResult.PRE_CONDITION_FAILED:
            return await compat.answer_precondition_failed(self, request)
        if result is FileResponseResult.NOT_MODIFIED:
            etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
            return await compat.answer_not_modified(self, request, etag, st.st_mtime)
        assert fobj is not None
        with fobj:
            return await compat.send_open_file(self, request, fobj, st)

    async def send_body(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        return await _prepare_and_send(self, request, fobj, offset, count)

    async def _refuse(self, request: web.BaseRequest, status: int) -> AbstractStreamWriter | None:
        self.set_status(status)
        return await web.StreamResponse.prepare(self, request)


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

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        with self._file:
            size = self.content_length or 0
            if request.method == hdrs.METH_HEAD or not size:
                return await super().prepare(request)  # write_eof sends the head alone
            return await _prepare_and_send(self, request, self._file, 0, size)


async def _prepare_and_send(
    response: web.StreamResponse, request: web.BaseRequest, file: IO[Any], offset: int, count: int
) -> AbstractStreamWriter:
    """``StreamResponse.prepare``, then its head and ``count`` bytes of ``file`` from
    ``offset`` through :func:`~clustr_aio.web.sendfile.send_head_and_file`."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("Connection lost")
    writer, head = await compat.prepare_keeping_head(response, request)  # to go with the file
    await send_head_and_file(transport, head, file, offset, count)
    writer.output_size += count  # as aiohttp's own write path counts it, for the access log
    await web.StreamResponse.write_eof(response)
    return writer


class InlineStaticResource(compat.StaticResourceHandler):
    """``StaticResource`` that looks the file up on the event loop and answers with
    :class:`InlineFileResponse`; see the module's documentation."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return self._response_for(request, request.match_info["filename"])

    def _response_for(self, request: web.Request, filename: str) -> web.StreamResponse:
        if any(segment.startswith(".") for segment in filename.split("/")):
            raise web.HTTPNotFound()
        if "/" not in filename and "\0" not in filename:
            response = self._fast_response(request, filename)
            if response is not None:
                return response
        if Path(filename).is_absolute():  # as aiohttp: //host/share would be a UNC path
            raise web.HTTPNotFound()
        path = compat.static_directory(self).joinpath(filename)
        # Refusals now, as JSON errors; FileResponse would answer them with an empty body.
        try:
            mode = path.stat().st_mode
        except (OSError, ValueError):  # missing, or a name the system refuses (a NUL byte)
            raise web.HTTPNotFound() from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO, a socket, a device
            raise web.HTTPForbidden()
        response = compat.static_response(self, path)
        if type(response) is web.FileResponse:
            return InlineFileResponse(compat.file_response_path(response))
        return response

    def _fast_response(self, request: web.Request, filename: str) -> web.StreamResponse | None:
        """The response for a plain name, or None when the slow path must decide."""
        headers = request.headers
        if any(header in headers for header in _SLOW_PATH_HEADERS):
            return None
        path = os.path.join(compat.static_directory(self), filename)
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


@functools.lru_cache(maxsize=256)
def _content_type(extension: str) -> str:
    """aiohttp's guess for a file name ending in ``extension``: its table has no encodings, so
    the guess depends on the last extension alone."""
    return compat.CONTENT_TYPES.guess_type("file" + extension)[0] or compat.FALLBACK_CONTENT_TYPE


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
