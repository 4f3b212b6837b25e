"""Every private internal that clustr_aio.compat reaches, touched once. When a library upgrade
moves or changes one, this file fails, naming it (the rest of the suite fails too, but somewhere
in a request)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import aiohttp_cors
import pytest
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.test_utils import make_mocked_request

from clustr_aio import compat
from clustr_aio.compat import FileResponseResult
from tests.conftest import JPEG, REPO, AiohttpClient
from tests.http.helpers import WAIT_SECONDS, eventually, raw_request, request_head


def test_every_listed_name_is_there() -> None:
    for name in compat.__all__:
        assert hasattr(compat, name), name


# --------------------------------------------------------------------------- aiohttp: errors


def test_http_errors() -> None:
    assert issubclass(compat.BadHttpMessage, compat.HttpProcessingError)
    assert compat.BadHttpMessage("Invalid header token").message == "Invalid header token"


# --------------------------------------------------------------------------- aiohttp: static files


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG)
    return path


def etag_of(path: Path) -> str:
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def test_plan_file_response(photo: Path, tmp_path: Path) -> None:
    cases = {
        FileResponseResult.SEND_FILE: {},
        FileResponseResult.NOT_MODIFIED: {"If-None-Match": etag_of(photo)},
        FileResponseResult.PRE_CONDITION_FAILED: {"If-Match": '"other"'},
    }
    for expected, headers in cases.items():
        request = make_mocked_request("GET", "/", headers=headers)
        result, fobj, st = compat.plan_file_response(web.FileResponse(photo), request)
        assert result is expected
        assert st.st_size == len(JPEG)
        assert (fobj is not None) == (expected is FileResponseResult.SEND_FILE)
        if fobj is not None:
            fobj.close()
    request = make_mocked_request("GET", "/")
    result, fobj, _ = compat.plan_file_response(web.FileResponse(tmp_path), request)
    assert (result, fobj) == (FileResponseResult.NOT_ACCEPTABLE, None)
    with pytest.raises(FileNotFoundError):
        compat.plan_file_response(web.FileResponse(tmp_path / "missing"), request)


class Probe(compat.FileResponseBodySender):
    """A step of ``FileResponse.prepare`` as compat exposes it, chosen by the request's path;
    records what aiohttp asks ``send_body`` for."""

    sent: ClassVar[list[tuple[int, int]]] = []

    async def send_body(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        self.sent.append((offset, count))
        return await super().send_body(request, fobj, offset, count)  # aiohttp's own

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        step = request.path.lstrip("/")
        if step == "not-modified":
            return await compat.answer_not_modified(self, request, "tag", 0.0)
        result, fobj, st = compat.plan_file_response(self, request)
        assert result is FileResponseResult.SEND_FILE
        assert fobj is not None
        with fobj:
            return await compat.send_open_file(self, request, fobj, st)


async def test_file_response_steps_and_body_sender(
    aiohttp_client: AiohttpClient, photo: Path
) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return Probe(photo)

    app = web.Application()
    app.router.add_get("/{step}", handler)
    client = await aiohttp_client(app)
    Probe.sent.clear()

    response = await client.get("/send")
    assert (response.status, await response.read()) == (200, JPEG)
    response = await client.get("/send", headers={"Range": "bytes=2-5"})
    assert (response.status, await response.read()) == (206, JPEG[2:6])
    assert Probe.sent == [(0, len(JPEG)), (2, 4)]

    response = await client.get("/not-modified")
    assert (response.status, response.headers["ETag"]) == (304, '"tag"')
    assert len(Probe.sent) == 2


async def test_prepare_keeping_head(aiohttp_client: AiohttpClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Probe": "1"})
        response.content_length = 2
        writer, head = await compat.prepare_keeping_head(response, request)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"X-Probe: 1\r\n" in head
        assert head.endswith(b"\r\n\r\n")
        assert request.transport is not None
        request.transport.write(head + b"hi")
        writer.output_size += 2
        await web.StreamResponse.write_eof(response)
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    response = await client.get("/")
    assert (response.status, response.headers["X-Probe"], await response.read()) == (
        200,
        "1",
        b"hi",
    )
    response = await client.get("/")  # the connection is still in a sane state
    assert await response.read() == b"hi"


# --------------------------------------------------------------------------- aiohttp: the server


@dataclass
class Started:
    """A running server whose ``GET /slow`` sets ``entered``, then waits for ``release``."""

    runner: web.AppRunner
    site: web.TCPSite
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    async def slow(_: web.Request) -> web.Response:
        server.entered.set()
        await server.release.wait()
        return web.Response(text="done")

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    server = Started(runner, web.TCPSite(runner, "127.0.0.1", 0))
    await server.site.start()
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.mark.both_loops
async def test_site_server(started: Started) -> None:
    server = compat.site_server(started.site)
    if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        assert server is not None
        assert [sock.getsockname()[1] for sock in server.sockets] == [started.site.port]
    else:
        assert server is None  # uvloop's server is no asyncio.Server: drain needs no step there
    assert compat.site_server(web.TCPSite(started.runner, "127.0.0.1", 0)) is None  # not started


async def test_connection_is_idle(started: Started) -> None:
    server, port = started.runner.server, started.site.port
    assert server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head("GET", "/slow", port=port))
        await asyncio.wait_for(started.entered.wait(), WAIT_SECONDS)
        [connection] = server.connections
        assert not compat.connection_is_idle(connection)  # a request is being handled
        started.release.set()
        await asyncio.wait_for(reader.readuntil(b"done"), WAIT_SECONDS)
        await eventually(lambda: compat.connection_is_idle(connection))  # kept alive, waiting
    finally:
        writer.close()
    assert (await raw_request("127.0.0.1", port, request_head("GET", "/"))).body == b"hello"


async def test_fed_stream_reader() -> None:
    stream = compat.fed_stream_reader([b"ab", b"", b"cd"])
    assert await stream.read() == b"abcd"
    assert stream.at_eof()


# --------------------------------------------------------------------------- aiohttp-cors


async def test_cors_internals() -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    route = app.router.add_get("/", hello)
    options = aiohttp_cors.ResourceOptions(allow_headers="*")
    cors = aiohttp_cors.setup(app, defaults={"https://a.example": options})
    cors.add(route)
    assert compat.cors_response_hook(cors) in app.on_response_prepare
    preflight = [r for r in app.router.routes() if compat.is_cors_preflight(r)]
    assert [r.method for r in preflight] == ["OPTIONS"]
    assert not compat.is_cors_preflight(route)


async def test_replace_route_handler(aiohttp_client: AiohttpClient) -> None:
    async def before(request: web.Request) -> web.Response:
        return web.Response(text="before")

    async def after(request: web.Request) -> web.StreamResponse:
        return web.Response(text="after")

    app = web.Application()
    route = app.router.add_get("/", before)
    compat.replace_route_handler(route, after)
    assert route.handler is after
    client = await aiohttp_client(app)
    assert await (await client.get("/")).text() == "after"


# --------------------------------------------------------------------------- prometheus-client

_MULTIPROCESS_CHILD = """
import os, sys
from pathlib import Path
import prometheus_client  # chooses in-memory values: the variable is not set yet
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from clustr_aio.compat import pids_with_live_gauges, use_multiprocess_values
use_multiprocess_values()
use_multiprocess_values()  # a second call changes nothing
registry = prometheus_client.CollectorRegistry()
prometheus_client.Gauge("g", "a live gauge", registry=registry, multiprocess_mode="livesum").inc()
prometheus_client.Counter("c", "a counter", registry=registry).inc()
print(os.getpid(), sorted(pids_with_live_gauges(Path(sys.argv[1]))))
"""


def test_multiprocess_values_and_live_gauge_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=True,
    )
    pid, pids = result.stdout.split(" ", 1)
    assert pids.strip() == f"[{pid}]"
    assert any(path.name.startswith("counter_") for path in tmp_path.iterdir())


def test_pids_with_live_gauges_reads_only_live_gauge_files(tmp_path: Path) -> None:
    for name in [
        "gauge_livesum_12.db",
        "gauge_liveall_13.db",
        "gauge_all_14.db",
        "counter_15.db",
        "gauge_livesum_x.db",
    ]:
        (tmp_path / name).touch()
    assert compat.pids_with_live_gauges(tmp_path) == {12, 13}


# --------------------------------------------------------------------------- aiohttp: connections


async def test_guarded_connection_internals() -> None:
    """What runtime/protocol.py's RequestHandler and Server subclasses rely on."""
    error = compat.ErrInfo(status=408, exc=compat.BadHttpMessage("late"), message="")
    assert (error.status, error.message) == (408, "")
    for kind in (
        compat.BadHttpMethod,
        compat.BadStatusLine,
        compat.InvalidHeader,
        compat.LineTooLong,
        compat.TransferEncodingError,
        compat.ContentLengthError,
    ):
        assert issubclass(kind, compat.BadHttpMessage)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler)
    for name in compat.GUARDED_SERVER_ATTRIBUTES:
        assert hasattr(server, name), name
    connection = server()
    for name in compat.GUARDED_HANDLER_ATTRIBUTES:
        assert hasattr(connection, name), name
    assert hasattr(web.AppRunner, "_make_server")
    transport_class: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport")  # noqa: B009
    assert isinstance(transport_class.max_size, int)


async def test_fresh_request_parser() -> None:
    """A parser made as aiohttp's RequestHandler makes its first: the same class, the options
    given (a head over ``max_line_size`` is refused), aiohttp's defaults for the others."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    connection = web.Server(handler)()
    parser: Any = compat.fresh_request_parser(connection, {"max_line_size": 100})
    messages, upgraded, _ = parser.feed_data(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not upgraded
    assert [message.path for message, _ in messages] == ["/x"]
    with pytest.raises(compat.LineTooLong):
        parser.feed_data(b"GET /" + b"y" * 200 + b" HTTP/1.1\r\n\r\n")
    defaults: Any = compat.fresh_request_parser(connection, {})
    messages, _, _ = defaults.feed_data(b"GET /" + b"y" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(messages) == 1
    assert type(parser) is type(connection._parser)  # the C parser (or Python's) as aiohttp's


# --------------------------------------------------------------------------- aiobotocore


async def test_signing_credentials_are_the_clients_own() -> None:
    """What storage/s3/put.py signs its small PUTs with: the client's credentials, whichever
    way they were found."""
    from clustr_aio.storage.s3.client import S3Config, open_client

    config = S3Config(
        bucket="b", endpoint_url="http://127.0.0.1:9", access_key_id="id", secret_access_key="k"
    )
    async with open_client(config) as client:
        credentials = compat.signing_credentials(client)
        frozen = await credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == ("id", "k")
