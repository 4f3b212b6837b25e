"""The private internals of aiohttp, aiohttp-cors, asyncio and prometheus-client that clustr_aio
relies on: this is the only module that imports or reaches them; everything else uses the names
below. ``tests/test_compat.py`` touches each one, so a library upgrade that moves one fails there,
by name, rather than in the middle of a request.

Each entry says why it is needed, which public API is missing, and since which release it has
been as used here (checked against the pinned aiohttp 3.14.5, aiohttp-cors 0.8.1,
prometheus-client 0.26.0 and Python 3.11).

aiohttp
-------
- :data:`HttpProcessingError`, :data:`BadHttpMessage` (``aiohttp.http_exceptions``, 3.0): what
  aiohttp raises for a broken request body (out of ``request.content.read*``) and logs for a
  request it cannot parse. Neither is exported by ``aiohttp`` or ``aiohttp.web``, nor
  documented; ``web.RequestPayloadError`` covers only some body errors.
- Stored files (``web/file_response.py`` serves them without aiohttp's thread-pool round
  trips, keeping ``FileResponse``'s policies for ranges and preconditions): aiohttp has no
  public hook for how a ``FileResponse`` finds its file or sends its body.

  - :data:`FileResponseResult` (``_FileResponseResult``, 3.12), :func:`plan_file_response`
    (``FileResponse._make_response``, 3.12), :func:`send_open_file` (``_prepare_open_file``,
    3.12), :func:`answer_not_modified`
    (``_not_modified``, 3.8): ``FileResponse.prepare`` in its steps,
    minus the executor.
  - :class:`FileResponseBodySender` (``FileResponse._sendfile``, 3.8): where a subclass sends
    the body.
  - :func:`prepare_keeping_head` (``StreamResponse._send_headers_immediately``,
    ``StreamWriter._headers_buf`` and ``_headers_written``, 3.12): the serialised head, to
    send with the file's first bytes in one ``sendfile`` burst.

- The hardened connection (``runtime/protocol.py``: timeouts, the connection limit, parser
  errors as JSON). aiohttp has no hook for a request's head timing out, a body stalling, or
  how its parser errors are answered, so it subclasses ``RequestHandler`` and ``Server``:

  - :data:`ErrInfo` (``web_protocol._ErrInfo``, 3.9): the queued stand-in for a request the
    parser refused, which the handler answers through ``handle_error``; queued for a 408/431.
  - :data:`BadHttpMethod`, :data:`BadStatusLine`, :data:`InvalidHeader`, :data:`LineTooLong`,
    :data:`TransferEncodingError`, :data:`ContentLengthError` (``aiohttp.http_exceptions``,
    3.0): which parser error it was, for a detail that does not echo the request.
  - :data:`GUARDED_HANDLER_ATTRIBUTES` of ``RequestHandler`` (its queue of parsed requests,
    its waiter, the request being handled, its lingering time, flow-control and close flags;
    for the quick answers, its parser, whose slot a request answered there frees, its
    keep-alive timeout and deadline, which such an answer moves as aiohttp's own do, and
    its upgraded flag and queue limit, without which the parser holds nothing after a
    bodiless request's head)
    and :data:`GUARDED_SERVER_ATTRIBUTES` of ``Server`` (its loop, handler options and
    connections, as its own ``__call__`` uses them), plus ``BaseRunner._make_server`` (3.0),
    overridden by ``DrainingRunner`` to swap the ``Server``'s class.
  - asyncio's selector transport ``max_size`` (Python 3.7): the ``recv`` size, lowered for
    connections beyond the 64th.
  - :func:`fresh_request_parser` (``RequestHandler.__init__``'s parser construction and
    ``web_protocol.MAX_MSG_QUEUE_SIZE``, 3.14): the body reader (``runtime/body_reader.py``)
    reads an upload's body around the connection's parser, which is left in the middle of it;
    the connection gets a new parser, made as aiohttp makes its first, for what follows. There
    is no public way to read a body other than through the parser.

- Draining (``runtime/drain.py``): :func:`site_server` (``BaseSite._server``, 3.0): the
  listening ``asyncio.Server`` (None on uvloop, whose server needs no such step), to stop
  accepting before closing (a site exposes only ``name``
  and ``stop()``); :func:`connection_is_idle` (``RequestHandler._waiter``, 3.0): whether a
  connection waits for its next request (there is no public flag).
- Tests and the multipart benchmark: :func:`fed_stream_reader` (``aiohttp.StreamReader``'s
  constructor with a ``base_protocol.BaseProtocol``, 3.7): aiohttp documents no way to make
  the body stream a ``MultipartReader`` reads outside a server.

aiohttp-cors
------------
- :func:`cors_response_hook` (``CorsConfig._cors_impl._on_response_prepare``, 0.4.0): the
  response hook ``setup`` installs, to run it only for requests with an ``Origin``; there is
  no option for that.
- :func:`is_cors_preflight`: the OPTIONS routes ``CorsConfig.add`` creates are told apart only
  by their handler living in ``aiohttp_cors`` (every release); no API lists them.
- :func:`replace_route_handler` (aiohttp's ``AbstractRoute._handler``, every 3.x): tus
  discovery answers the ``OPTIONS`` that aiohttp-cors's preflight route owns.

prometheus-client
-----------------
- :func:`use_multiprocess_values` (``prometheus_client.values.ValueClass``,
  ``MultiProcessValue`` and its ``_multiprocess`` flag, 0.5.0): the value storage is chosen
  once, at import, from ``PROMETHEUS_MULTIPROC_DIR``; a supervisor that sets the variable
  later must switch it. The documented way (set it before the process starts) does not fit a
  server that creates the directory itself.
- :func:`pids_with_live_gauges` (the ``gauge_live<mode>_<pid>.db`` files, 0.5.0): which
  processes' live gauges are on disk, for ``multiprocess.mark_process_dead``, which needs the
  pids; nothing lists them.

aiobotocore (botocore)
----------------------
- :func:`signing_credentials` (``BaseClient._request_signer._credentials``, botocore 1.0):
  the credentials a client signs with, for the small PUTs ``storage/s3/put.py`` signs with
  botocore's own signer. Taking the client's (the settings' keys, or what the standard chain
  found for it, refreshed by botocore) spares a second session and a second credential
  chain; the public way, ``Session.get_credentials``, needs the session the client was made
  from, which aiobotocore does not keep. botocore is not imported here: only ``STORAGE=s3``
  loads it.

Gone, for a public equivalent: pydantic-settings' ``TomlConfigSettingsSource.toml_data`` and
``DotEnvSettingsSource.env_vars`` (the settings read their files with ``tomllib`` and
python-dotenv themselves, :mod:`clustr_aio.settings.loading`);
``web_urldispatcher._default_expect_handler`` (the upload's expect handler writes
``100 Continue`` through ``request.writer``, as aiohttp documents);
``trsock.TransportSocket._sock`` (``web/sendfile.py`` borrows the socket by its descriptor,
which works on uvloop's transports too); ``web_fileresponse.CONTENT_TYPES`` (stored files get
an explicit Content-Type from the image types the upload checks, which ``FileResponse``
keeps); ``StaticResource`` and its internals (``/uploads/{filename}`` is an ordinary route that
asks the storage).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final, cast

import aiohttp_cors
from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_writer import StreamWriter
from aiohttp.web_fileresponse import _FileResponseResult as FileResponseResult
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE
from aiohttp.web_protocol import _ErrInfo as ErrInfo
from prometheus_client import values

__all__ = [
    "GUARDED_HANDLER_ATTRIBUTES",
    "GUARDED_SERVER_ATTRIBUTES",
    "BadHttpMessage",
    "BadHttpMethod",
    "BadStatusLine",
    "ContentLengthError",
    "ErrInfo",
    "FileResponseBodySender",
    "FileResponseResult",
    "HttpProcessingError",
    "InvalidHeader",
    "LineTooLong",
    "TransferEncodingError",
    "answer_not_modified",
    "connection_is_idle",
    "cors_response_hook",
    "fed_stream_reader",
    "fresh_request_parser",
    "is_cors_preflight",
    "pids_with_live_gauges",
    "plan_file_response",
    "prepare_keeping_head",
    "replace_route_handler",
    "send_open_file",
    "signing_credentials",
    "site_server",
    "use_multiprocess_values",
]

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GUARDED_HANDLER_ATTRIBUTES: Final = (
    "_messages",
    "_waiter",
    "_request_count",
    "_current_request",
    "_lingering_time",
    "_reading_paused",
    "_force_close",
    "_close",
    "_loop",
    "_parser",
    "_keepalive_timeout",
    "_next_keepalive_close_time",
    "_upgraded",
    "_max_msg_queue_size",
)
"""``RequestHandler`` attributes that ``runtime/protocol.py``'s subclass reads or sets."""
GUARDED_SERVER_ATTRIBUTES: Final = ("_loop", "_kwargs", "_connections")
"""``web.Server`` attributes that ``runtime/protocol.py``'s subclass uses."""

# --------------------------------------------------------------------------- aiohttp: static files


def plan_file_response(
    response: web.FileResponse, request: web.BaseRequest
) -> tuple[FileResponseResult, io.BufferedReader | None, os.stat_result]:
    """What ``response`` will answer (send, 304, 412, refuse a non-file) with its file opened
    and stat'ed, on the calling thread. Pre-compressed siblings are never looked for.

    Raises:
        OSError: the file cannot be opened or stat'ed (missing, no permission, ...).
    """
    result, fobj, st, _encoding = response._make_response(request, "")
    return result, fobj, st


async def send_open_file(
    response: web.FileResponse,
    request: web.BaseRequest,
    fobj: io.BufferedReader,
    st: os.stat_result,
) -> AbstractStreamWriter | None:
    """The 200 or 206 (or 416) for the open file, as ``FileResponse.prepare`` would send it."""
    return await response._prepare_open_file(request, fobj, st, None)


async def answer_not_modified(
    response: web.FileResponse, request: web.BaseRequest, etag: str, last_modified: float
) -> AbstractStreamWriter | None:
    return await response._not_modified(request, etag, last_modified)


class FileResponseBodySender(web.FileResponse):
    """A ``FileResponse`` whose body is sent by its :meth:`send_body`: aiohttp calls the
    private ``_sendfile`` for that, which every subclass's ``send_body`` becomes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        setattr(cls, "_sendfile", cls.send_body)  # noqa: B010 (mypy forbids assigning a method)

    async def send_body(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        """Prepare the response and send ``count`` bytes of ``fobj`` from ``offset``."""
        return await web.FileResponse._sendfile(self, request, fobj, offset, count)


async def prepare_keeping_head(
    response: web.StreamResponse, request: web.BaseRequest
) -> tuple[AbstractStreamWriter, bytes]:
    """``StreamResponse.prepare`` (the base class's, whatever ``response`` is), except that the
    status line and headers are handed back instead of sent; the writer takes them as sent."""
    response._send_headers_immediately = False
    writer = await web.StreamResponse.prepare(response, request)
    assert isinstance(writer, StreamWriter)
    head = writer._headers_buf
    assert head is not None
    assert not writer._headers_written
    writer._headers_buf = None
    writer._headers_written = True
    return writer, head


# --------------------------------------------------------------------------- aiohttp: the server


def site_server(site: web.BaseSite) -> asyncio.Server | None:
    """The listening ``asyncio.Server`` of a started site (None before ``start``, and for a
    named-pipe site, which has none)."""
    server = site._server
    return server if isinstance(server, asyncio.Server) else None


@functools.cache
def _handler_defaults() -> Mapping[str, Any]:
    parameters = inspect.signature(web.RequestHandler.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def fresh_request_parser(
    connection: web.RequestHandler, options: Mapping[str, Any]
) -> HttpRequestParser:
    """A request parser for ``connection`` as ``RequestHandler.__init__`` makes its first, from
    the keyword ``options`` the connection was made with (aiohttp's defaults for the others)."""
    given = {**_handler_defaults(), **options}
    return HttpRequestParser(
        connection,
        connection._loop,
        given["read_bufsize"],
        max_line_size=given["max_line_size"],
        max_field_size=given["max_field_size"],
        max_headers=given["max_headers"],
        payload_exception=web.RequestPayloadError,
        auto_decompress=given["auto_decompress"],
        max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
    )


def connection_is_idle(connection: web.RequestHandler) -> bool:
    """Whether the connection waits for its next request, with none being received or handled.

    The test aiohttp's own keep-alive timer makes: the handler awaits ``_waiter`` only when its
    queue of parsed requests is empty, and a request that arrives completes the waiter at once.
    """
    waiter: asyncio.Future[None] | None = connection._waiter
    return waiter is not None and not waiter.done()


class _IdleProtocol:
    """Just enough of aiohttp's ``BaseProtocol`` for a ``StreamReader`` fed up front."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def fed_stream_reader(chunks: Iterable[bytes]) -> StreamReader:
    """A request-body stream already holding ``chunks`` and its end (call it in a running
    event loop), as ``request.content`` would hand them to a ``MultipartReader``."""
    stream = StreamReader(
        cast(BaseProtocol, _IdleProtocol()), 1 << 16, loop=asyncio.get_running_loop()
    )
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    return stream


# --------------------------------------------------------------------------- aiohttp-cors


def cors_response_hook(cors: aiohttp_cors.CorsConfig) -> ResponseHook:
    """The ``on_response_prepare`` hook that ``aiohttp_cors.setup`` appended to the app."""
    impl = cors._cors_impl
    assert impl is not None
    hook: ResponseHook = impl._on_response_prepare
    return hook


def is_cors_preflight(route: web.AbstractRoute) -> bool:
    """Whether ``route`` is an OPTIONS route that aiohttp-cors added for preflight requests."""
    return str(getattr(route.handler, "__module__", "")).startswith("aiohttp_cors.")


# --------------------------------------------------------------------------- prometheus-client

_LIVE_GAUGE_FILES: Final = "gauge_live*_*.db"


def use_multiprocess_values() -> None:
    """Make metrics created from now on file-backed (``PROMETHEUS_MULTIPROC_DIR`` must be
    set), even if prometheus-client was imported before the variable was."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def pids_with_live_gauges(directory: Path) -> set[int]:
    """The processes whose ``live*`` gauges have a file in the multiprocess ``directory``."""
    pids = set()
    for path in directory.glob(_LIVE_GAUGE_FILES):
        pid_text = path.stem.rpartition("_")[2]
        if pid_text.isdigit():
            pids.add(int(pid_text))
    return pids


def replace_route_handler(route: web.AbstractRoute, handler: Handler) -> None:
    """Serve ``route`` with ``handler`` instead (``AbstractRoute._handler``, every 3.x): the
    OPTIONS routes aiohttp-cors adds are the only OPTIONS a resource may have, so tus discovery
    wraps the preflight handler rather than adding a route of its own."""
    route._handler = cast(Any, handler)


# --------------------------------------------------------------------------- aiobotocore


def signing_credentials(client: Any) -> Any:
    """The credentials object ``client`` (an aiobotocore client) signs its requests with:
    an ``AioCredentials`` (or a refreshable one), None when none were found."""
    return client._request_signer._credentials
