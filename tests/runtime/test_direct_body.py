"""An upload's body received around aiohttp's parser from its first byte
(clustr_aio.runtime.direct_body), over raw sockets against the production runner, on both event
loops: the bytes stored are the bytes sent, whatever the reads, and the connection goes on as
before (pipelining, keep-alive, early answers, timeouts, disconnects); a head not whole in one
read, or a body not of known length, goes the parser's way."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from clustr_aio.runtime import body_reader, protocol
from clustr_aio.runtime.direct_body import HIGH_WATER, DirectBody, DirectTargets
from tests.conftest import (
    JPEG,
    AiohttpClient,
    Client,
    assert_nothing_stored,
    serve_production,
    stored_files,
    temp_files,
)
from tests.http.helpers import (
    chunked,
    eventually,
    files_body,
    multipart_headers,
    read_response,
    request_head,
    upload_ok,
)
from tests.runtime.test_body_reader import open_connection, photo, send_in_pieces, upload_request

pytestmark = pytest.mark.both_loops  # it reads what the transport hands on: the loops differ

SHORT = 0.5


@pytest.fixture
async def server(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(aiohttp_client, upload_dir, body_idle_timeout=SHORT)


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> list[DirectBody]:
    """The bodies the connections received around the parser, as they are made."""
    made: list[DirectBody] = []

    class Spied(DirectBody):
        __slots__ = ()

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(protocol, "DirectBody", Spied)
    return made


async def test_bodies_are_stored_byte_for_byte_whatever_the_reads(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    """Small and large bodies, the head and the body's start in one write, the rest in pieces
    of 1 byte to 300 KB: the bytes stored are the bytes sent."""
    port = server.server.port or 0
    sizes = (10, 70_000, 500_000, 3 * 1024 * 1024)
    for seed, size in enumerate(sizes):
        data = photo(size, seed)
        body = files_body((f"f{seed}.jpg", data))
        reader, writer = await open_connection(server)
        head = upload_request(body, port)
        writer.write(head + body[: 1000 + seed])  # the whole head in the server's first read
        await writer.drain()
        await send_in_pieces(writer, body[1000 + seed :], seed)
        response = await read_response(reader)
        writer.close()
        assert response.status == 200, response.body
        assert (upload_dir / f"f{seed}.jpg").read_bytes() == data
    assert len(direct) == len(sizes)
    assert all(not body.remaining for body in direct)


async def test_keep_alive_and_pipelined_requests_behind_a_body(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    """Three uploads and a GET in one write, then two more uploads one after another on the
    same connection: each body ends where its Content-Length says, and the next request is
    parsed from there."""
    port = server.server.port or 0
    datas = [photo(size, n) for n, size in enumerate((300_000, 20, 600_000, 1000, 200_000))]
    bodies = [files_body((f"p{n}.jpg", data)) for n, data in enumerate(datas)]
    requests = [upload_request(body, port) + body for body in bodies]
    reader, writer = await open_connection(server)
    writer.write(requests[0] + requests[1] + request_head("GET", "/", port=port) + requests[2])
    answers = [await read_response(reader) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 200], answers[-1].body
    assert answers[2].json() == {"message": "Hello World"}
    for request in requests[3:]:
        writer.write(request)
        answer = await read_response(reader)
        assert answer.status == 200, answer.body
    writer.close()
    for n, data in enumerate(datas):
        assert (upload_dir / f"p{n}.jpg").read_bytes() == data
    assert len(direct) >= 3  # the first, and each upload sent on its own after an answer
    connection = direct[0]._connection
    assert isinstance(connection, protocol.GuardedRequestHandler)
    assert not connection.trailer_reader.lost  # it followed the bodies received around it


async def test_a_head_split_over_reads_or_a_chunked_body_takes_the_parsers_path(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    port = server.server.port or 0
    data = photo(300_000, 3)
    body = files_body(("split.jpg", data))
    head = upload_request(body, port)
    reader, writer = await open_connection(server)
    writer.write(head[:20])
    await writer.drain()
    await asyncio.sleep(0.05)  # the server reads the head's start alone
    writer.write(head[20:] + body)
    split = await read_response(reader)
    chunked_data = photo(300_000, 4)
    chunked_head = {**multipart_headers(), "Transfer-Encoding": "chunked"}
    writer.write(request_head("POST", "/api/upload", chunked_head, port=port))
    writer.write(chunked(files_body(("chunked.jpg", chunked_data))))
    chunked_answer = await read_response(reader)
    writer.close()
    assert split.status == 200, split.body
    assert chunked_answer.status == 200, chunked_answer.body
    assert (upload_dir / "split.jpg").read_bytes() == data
    assert (upload_dir / "chunked.jpg").read_bytes() == chunked_data
    assert direct == []


async def test_an_early_refusal_drops_the_rest_and_the_connection_goes_on(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    """A 415 while most of the body is still to come, and a 406 the route answers before it
    reads a byte (not multipart): the rest of each body is read and dropped, and the next
    request on the connection is served."""
    port = server.server.port or 0
    refused = files_body(("notes.txt", os.urandom(1024 * 1024)))
    not_multipart = os.urandom(100_000)
    accepted = photo(100_000, 5)
    body = files_body(("after.jpg", accepted))
    reader, writer = await open_connection(server)
    writer.write(upload_request(refused, port) + refused[:100_000])
    answer = await read_response(reader)  # before the rest is sent
    assert answer.status == 415, answer.body
    odd = upload_request(not_multipart, port, **{"Content-Type": "application/octet-stream"})
    writer.write(refused[100_000:] + odd + not_multipart[:1000])
    odd_answer = await read_response(reader)
    assert odd_answer.status == 406, odd_answer.body
    writer.write(not_multipart[1000:] + upload_request(body, port) + body)
    after = await read_response(reader)
    writer.close()
    assert after.status == 200, after.body
    assert stored_files(upload_dir) == ["after.jpg"]
    assert (upload_dir / "after.jpg").read_bytes() == accepted
    assert len(direct) == 3


async def test_a_stalled_body_is_a_408_and_leaves_nothing(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    body = files_body(("stalled.jpg", photo(400_000, 6)))
    reader, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0) + body[:200_000])
    response = await read_response(reader)
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.status == 408, response.body
    assert rest == b""  # and the connection is closed
    assert len(direct) == 1
    assert_nothing_stored(upload_dir)


async def test_a_client_gone_mid_body_leaves_nothing_and_the_server_serves(
    server: Client, upload_dir: Path, direct: list[DirectBody]
) -> None:
    body = files_body(("gone.jpg", photo(400_000, 7)))
    _, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0) + body[:200_000])
    await writer.drain()
    await eventually(lambda: bool(temp_files(upload_dir)))  # it really was mid-body
    writer.transport.abort()
    await eventually(lambda: not temp_files(upload_dir))
    assert len(direct) == 1
    await upload_ok(server, ("next.jpg", JPEG))
    assert stored_files(upload_dir) == ["next.jpg"]


async def test_a_body_faster_than_the_route_pauses_the_socket(
    server: Client, upload_dir: Path, direct: list[DirectBody], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the route's reads slowed down, no more than about HIGH_WATER of the body waits in
    memory: the socket is paused above it, and the upload still stores every byte."""
    original = DirectBody.read
    most = [0]

    async def slow_read(self: DirectBody) -> Any:
        await asyncio.sleep(0.002)
        most[0] = max(most[0], self._unread)
        return await original(self)

    monkeypatch.setattr(DirectBody, "read", slow_read)
    monkeypatch.setattr(body_reader, "MAX_READERS", 0)  # no reader takes the rest: all here
    data = photo(6 * 1024 * 1024, 8)
    body = files_body(("slow.jpg", data))
    head = upload_request(body, server.server.port or 0)
    reader, writer = await open_connection(server)
    writer.write(head + body[:1000])  # the head whole: received around the parser
    await writer.drain()
    await asyncio.sleep(0.05)  # the route starts, and reads little at a time
    writer.write(body[1000:])
    response = await read_response(reader)
    writer.close()
    assert response.status == 200, response.body
    assert (upload_dir / "slow.jpg").read_bytes() == data
    assert len(direct) == 1
    assert HIGH_WATER // 2 <= most[0] < HIGH_WATER + 512 * 1024  # a read beyond it at most


def test_targets_are_posts_to_the_paths_with_or_without_a_query() -> None:
    targets = DirectTargets("/api/upload")
    assert targets.starts(b"POST /api/upload HTTP/1.1\r\n")
    assert targets.starts(b"POST /api/upload?atomic=false HTTP/1.1\r\n")
    assert not targets.starts(b"POST /api/uploads HTTP/1.1\r\n")
    assert not targets.starts(b"PUT /api/upload HTTP/1.1\r\n")
    assert not targets.starts(b"GET /api/upload HTTP/1.1\r\n")
