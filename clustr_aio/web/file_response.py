"""The response for a stored file on this machine's disk, made cheap per request.

A GET of a stored photo is the request the front end sends most. aiohttp's ``add_static``
costs it two thread-pool round trips (resolving the path, then stat-and-open), a third to close
the file, and asyncio's ``loop.sendfile``. Those cost far more than the page-cached lookups and
the copy they wrap (see :mod:`clustr_aio.web.sendfile`). This module makes the lookups on the
event loop, as nginx does, and takes a fast path for the common request:

- **fast path**, for no ``Range`` or ``If-*`` header: one ``open(O_NOFOLLOW)`` and ``fstat``,
  the headers aiohttp's ``FileResponse`` would give a 200, and
  :func:`~clustr_aio.web.sendfile.send_head_and_file`;
- **slow path**, for ranges and preconditions: aiohttp's ``FileResponse`` and its policies
  (206/416, 304/412), with its filesystem calls made inline and the body sent by the same
  function; its 412 and 416 are JSON like every error, and an ``If-Range`` naming another
  entity tag gets the whole file (a 200), not the range.

With both, ``wrk -t1 -c16 -d5s`` GETs of a 498 KB JPEG went from 3,000-3,250 to 5,500-5,830
req/s on this 2-core machine (0.31 to 0.17-0.18 ms of server CPU each, three runs each);
aiohttp's stock ``add_static`` did 1,500-1,650.

Only regular files are served: a symlink or a directory planted in the folder is a 404, a FIFO
or device a 403, before any response starts, so that they become JSON like any other error.
The slow path's own refusals (412, 416) are JSON too, and an ``If-Range`` naming another entity
tag gets the whole file (a 200), not the range.
Pre-compressed siblings (``a.jpg.gz`` for ``Accept-Encoding: gzip``) are never looked for: a
stored file is served as it was stored.

**What the browser is told** (:func:`served_headers`): a name whose extension is one of the
image types the upload checks by their bytes (:data:`~clustr_aio.domain.sniff.KNOWN_TYPES`)
goes out as that type; any other file — an ``.html`` or ``.svg`` accepted because an operator
widened ``ALLOWED_EXTENSIONS`` — as ``application/octet-stream`` with ``Content-Disposition:
attachment``, so it is never rendered from the API's origin (a stored cross-site script). Every
response also carries ``Content-Security-Policy: default-src 'none'; sandbox``.

The cost: a cold ``stat`` on a slow disk stalls the loop for its duration. This relies on
aiohttp internals (:mod:`clustr_aio.compat`), which is why aiohttp is pinned;
tests/http/test_static.py covers the behaviour.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from collections.abc import Mapping
from typing import IO, Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from clustr_aio import compat
from clustr_aio.compat import FileResponseResult
from clustr_aio.domain.sniff import OCTET_STREAM, type_for_extension
from clustr_aio.web.responses import error_response, json_bytes
from clustr_aio.web.sendfile import send_head_and_file

__all__ = ["file_response", "immutable_file_response", "served_headers"]

CONTENT_SECURITY_POLICY: Final = "default-src 'none'; sandbox"
"""On every stored-file response: nothing a stored file holds may run, load or frame."""

# The headers that take a request off the fast path: aiohttp's FileResponse answers them.
_SLOW_PATH_HEADERS: Final = (
    hdrs.RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)
# O_NOFOLLOW: a symlink is refused (ELOOP). O_NONBLOCK: opening a FIFO placed in the folder by
# hand must not block the loop (it changes nothing for a file).
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ERROR_HEADERS: Final = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}


def file_response(request: web.Request, path: str, name: str) -> web.StreamResponse:
    """The answer to a GET or HEAD of the stored file ``name``, whose bytes are at ``path``."""
    headers = served_headers(name)
    if any(header in request.headers for header in _SLOW_PATH_HEADERS):
        return _slow_response(path, headers)
    return _open_response(path, headers)


def immutable_file_response(path: str, headers: Mapping[str, str], etag: str) -> web.StreamResponse:
    """A 200 with the whole file at ``path``, whose contents never change under its name, so
    that ``etag`` (unquoted, strong) names them; the caller answered ``If-None-Match``."""
    return _open_response(path, headers, etag=etag)


def _open_response(
    path: str, headers: Mapping[str, str], *, etag: str | None = None
) -> web.StreamResponse:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        return _refusal(error)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return _refusal_for_mode(st.st_mode)
        file = io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return StoredFileResponse(file, st, headers, etag=etag)


@functools.lru_cache(maxsize=256)
def served_headers(name: str) -> Mapping[str, str]:
    """Content-Type (and, for what is not a checked image type, Content-Disposition) and the
    Content-Security-Policy of a stored file, from its name alone."""
    image = type_for_extension(os.path.splitext(name)[1][1:].lower())
    headers = {
        hdrs.CONTENT_TYPE: image.content_type if image else OCTET_STREAM,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    if image is None:
        headers[hdrs.CONTENT_DISPOSITION] = "attachment"
    return headers


def _slow_response(path: str, headers: Mapping[str, str]) -> web.StreamResponse:
    try:
        st = os.lstat(path)  # not stat: a symlink is refused, not followed
    except OSError as error:
        return _refusal(error)
    if not stat.S_ISREG(st.st_mode):
        return _refusal_for_mode(st.st_mode)
    return InlineFileResponse(path, headers=headers)


def _refusal(error: OSError) -> web.Response:
    if isinstance(error, PermissionError):
        return error_response(403, "Forbidden", headers=_ERROR_HEADERS)
    return error_response(404, "Not Found", headers=_ERROR_HEADERS)  # ENOENT, ELOOP (a symlink)


def _refusal_for_mode(mode: int) -> web.Response:
    if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):  # only files are served, never folders
        return error_response(404, "Not Found", headers=_ERROR_HEADERS)
    return error_response(403, "Forbidden", headers=_ERROR_HEADERS)  # a FIFO, socket, device


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
            return await self._refuse(request, 412, "Precondition Failed")
        etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        if result is FileResponseResult.NOT_MODIFIED:
            return await compat.answer_not_modified(self, request, etag, st.st_mtime)
        assert fobj is not None
        with fobj:
            if hdrs.RANGE in request.headers:
                if _if_range_fails(request, f'"{etag}"'):
                    # aiohttp reads If-Range only as a date, and an entity tag as no If-Range at
                    # all: the range would be sent from a file that may have changed since.
                    headers = request.headers.copy()
                    del headers[hdrs.RANGE]
                    request = request.clone(headers=headers)
                elif _range_unsatisfiable(request, st.st_size):
                    self.headers[hdrs.CONTENT_RANGE] = f"bytes */{st.st_size}"
                    return await self._refuse(request, 416, "Range Not Satisfiable")
            return await compat.send_open_file(self, request, fobj, st)

    async def send_body(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        return await _prepare_and_send(self, request, fobj, offset, count)

    async def _refuse(
        self, request: web.BaseRequest, status: int, detail: str | None = None
    ) -> AbstractStreamWriter | None:
        """A ``{"detail"}`` answer from within ``prepare`` (the JSON middleware is behind us)."""
        self.set_status(status)
        body = json_bytes({"detail": detail or self.reason})  # an ErrorBody
        self.headers.popall(hdrs.CONTENT_DISPOSITION, None)
        self.content_type = "application/json"
        self.content_length = len(body)
        writer = await web.StreamResponse.prepare(self, request)
        if request.method != hdrs.METH_HEAD:
            await self.write(body)
        await self.write_eof()
        return writer


def _if_range_fails(request: web.BaseRequest, etag: str) -> bool:
    """Whether an ``If-Range`` entity tag (a date is aiohttp's to judge) is not the file's:
    only a strong, equal tag lets the range through (RFC 9110 section 13.1.5)."""
    value = request.headers.get(hdrs.IF_RANGE)
    if value is None or request.if_range is not None:
        return False
    return value.strip() != etag


def _range_unsatisfiable(request: web.BaseRequest, size: int) -> bool:
    """aiohttp's test for a 416 (in ``FileResponse._prepare_open_file``), made before it, so
    that the 416 is JSON."""
    try:
        requested = request.http_range
    except ValueError:
        return True
    start: int | None = requested.start
    if start is None or (start < 0 and requested.stop is None):
        return False
    return start >= size


class StoredFileResponse(web.StreamResponse):
    """The fast path's answer: 200 with the whole of a regular file, already open. Its headers
    are those aiohttp's ``FileResponse`` gives a 200 (tests/http/test_static.py compares);
    ``etag`` replaces the one made of the file's time and size (a file whose name never changes
    contents: a thumbnail), and then no ranges are offered."""

    def __init__(
        self,
        file: io.FileIO,
        st: os.stat_result,
        headers: Mapping[str, str],
        *,
        etag: str | None = None,
    ) -> None:
        super().__init__(headers=headers)
        self._file = file
        self.content_length = st.st_size
        if etag is not None:
            self.etag = etag
            return
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        self.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        self.last_modified = st.st_mtime

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
    await send_head_and_file(transport, head, file, offset, count, drain=writer.drain)
    writer.output_size += count  # as aiohttp's own write path counts it, for the access log
    await web.StreamResponse.write_eof(response)
    return writer
