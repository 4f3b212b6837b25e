"""aiohttp's static route for the stored files, with its filesystem calls made on the event loop.

``add_static`` sends every request through the default thread pool twice (resolving the path,
then stat-and-open in ``FileResponse``) and closes the file in a third round trip. For a stored
photo those calls are a few page-cached metadata look-ups (microseconds), while each round trip
costs far more: thread hand-off, a self-pipe wake-up and the GIL changing hands, twice. With
``BENCH_ONLY=S,S2 make bench`` the server's CPU time per GET of a 500 KB photo went from 0.69 to
0.52 ms (0.56 to 0.36 ms in a bare aiohttp app). nginx, too, makes these calls in its event loop.
The cost: a cold stat on a slow disk would stall the loop for its duration.

Everything else is aiohttp's own code: path resolution and the symlink policy, directories
refused, ETag / Last-Modified / 304 / 412, Range / 206 / 416, HEAD, Content-Type, sendfile.
This relies on aiohttp internals (``FileResponse._make_response`` and friends), which is why
aiohttp is pinned; tests/http/test_static.py covers the behaviour.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import _FileResponseResult
from aiohttp.web_request import BaseRequest

__all__ = ["InlineFileResponse", "InlineStaticResource", "add_inline_static"]


class InlineFileResponse(web.FileResponse):
    """``FileResponse`` whose stat, open and close run on the event loop (see module doc)."""

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp's FileResponse.prepare, minus the two thread-pool round trips.
        accept_encoding = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
        try:
            result, fobj, st, file_encoding = self._make_response(request, accept_encoding)
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
        try:
            return await self._prepare_open_file(request, fobj, st, file_encoding)
        finally:
            fobj.close()

    async def _refuse(self, request: BaseRequest, status: int) -> AbstractStreamWriter | None:
        self.set_status(status)
        return await web.StreamResponse.prepare(self, request)


class InlineStaticResource(web.StaticResource):
    """``StaticResource`` that resolves the path on the event loop and answers with
    :class:`InlineFileResponse`."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        if _is_plain_name(filename):
            # The common case, a regular file right in the folder: Path.resolve() would lstat
            # every component of the folder's (already resolved) path to conclude the same.
            path = os.path.join(self._directory, filename)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    return InlineFileResponse(path, chunk_size=self._chunk_size)
        if Path(filename).is_absolute():  # as aiohttp: //host/share would be a UNC path
            raise web.HTTPNotFound()
        response = self._resolve_path_to_response(self._directory.joinpath(filename))
        if type(response) is web.FileResponse:
            return InlineFileResponse(response._path, chunk_size=self._chunk_size)
        return response


def _is_plain_name(filename: str) -> bool:
    """A single path segment that names an entry of the folder itself."""
    return filename not in ("", ".", "..") and "/" not in filename and "\0" not in filename


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
