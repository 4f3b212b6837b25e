"""An upload's body read around aiohttp's parser (clustr_aio.runtime.body_reader), over raw
sockets against the production runner, on both event loops: the bytes stored are the bytes
sent, blocks are reused only when nothing sees them, and the connection goes on as before
(pipelining, keep-alive, 100-continue, early answers, timeouts); what it does not take goes
aiohttp's way."""

from __future__ import annotations

import asyncio
import base64
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from clustr_aio.ingest.hashing import BUDGET_BYTES
from clustr_aio.runtime import body_reader
from clustr_aio.runtime.body_reader import _KEPT, BLOCK, BlockPool, BodyReader, _exported
from clustr_aio.storage.local import LocalStorage
from clustr_aio.web.keys import STORAGE
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
    read_head,
    read_response,
    request_head,
    upload_ok,
)

pytestmark = pytest.mark.both_loops  # it touches transports: asyncio's and uvloop's differ

MIB = 1024 * 1024
SHORT = 0.5


@pytest.fixture
async def server(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    return await serve_production(aiohttp_client, upload_dir, body_idle_timeout=SHORT)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BodyReader]]:
    """The readers that took a connection, as they are taken."""
    readers: list[BodyReader] = []
    original = BodyReader.take

    def spy(request: Any, pool: BlockPool) -> BodyReader | None:
        reader = original(request, pool)
        if reader is not None:
            readers.append(reader)
        return reader

    monkeypatch.setattr(BodyReader, "take", staticmethod(spy))
    yield readers
    assert body_reader.POOL.readers == 0  # every reader gave its connection back


def photo(size: int, seed: int) -> bytes:
    """A valid JPEG followed by ``size`` random bytes (stored as they are, after its end)."""
    return JPEG + random.Random(seed).randbytes(size)


def upload_request(body: bytes, port: int, **headers: str) -> bytes:
    head = {**multipart_headers(), "Content-Length": str(len(body)), **headers}
    return request_head("POST", "/api/upload", head, port=port)


async def open_connection(server: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.server.port is not None
    return await asyncio.open_connection("127.0.0.1", server.server.port)


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, seed: int) -> None:
    """``data`` in pieces of 1 byte to 300 KB, draining after each: the server's reads end
    anywhere, inside delimiters and part headers too."""
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 100, 4096, 65536, 300_000))
        writer.write(data[at : at + size])
        at += size
        await writer.drain()
        if rng.random() < 0.05:
            await asyncio.sleep(0.001)


async def upload_in_pieces(server: Client, files: list[tuple[str, bytes]], seed: int) -> None:
    body = files_body(*files)
    reader, writer = await open_connection(server)
    port = server.server.port or 0
    await send_in_pieces(writer, upload_request(body, port) + body, seed)
    response = await read_response(reader)
    writer.close()
    assert response.status == 200, response.body


def many_blocks(server: Client) -> None:
    """Each file is held in memory until it ends (a write block larger than the file), so its
    pieces keep several blocks in use: a block reused while seen would change a file."""
    assert server.app is not None
    storage = server.app[STORAGE]
    assert isinstance(storage, LocalStorage)
    storage.write_block = 64 * MIB


async def test_files_are_stored_byte_for_byte_whatever_the_reads(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    many_blocks(server)
    sizes = random.Random(0)
    files = [
        [(f"u{u}-f{f}.jpg", photo(sizes.randrange(1, 5 * MIB), 10 * u + f)) for f in range(3)]
        for u in range(3)
    ]
    await asyncio.gather(*(upload_in_pieces(server, batch, u) for u, batch in enumerate(files)))
    assert len(taken) == 3
    for batch in files:
        for name, data in batch:
            assert (upload_dir / name).read_bytes() == data, name


async def test_a_block_reused_while_seen_would_change_the_files(
    server: Client, upload_dir: Path, taken: list[BodyReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above can fail: with the check that no view of a block is left taken out,
    what is stored is no longer what was sent."""
    monkeypatch.setattr(body_reader, "_exported", lambda block: False)
    many_blocks(server)
    files = [(f"f{n}.jpg", photo(3 * MIB, n)) for n in range(3)]
    await upload_in_pieces(server, files, 1)
    assert taken
    assert any((upload_dir / name).read_bytes() != data for name, data in files)


async def test_a_long_body_keeps_more_free_blocks_only_while_it_is_read(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    files = [(f"f{n}.jpg", photo(MIB, n)) for n in range(4)]  # 4 MiB: a long body
    await upload_ok(server, *files)
    assert len(taken) == 1
    assert body_reader.POOL.long_readers == 0
    assert len(body_reader.POOL._free) <= _KEPT  # more were kept while it was read (9 here)
    for name, data in files:
        assert (upload_dir / name).read_bytes() == data


async def test_the_connection_serves_what_is_pipelined_behind_the_body(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    port = server.server.port or 0
    first, second = photo(2 * MIB, 1), photo(MIB, 2)
    body1, body2 = files_body(("one.jpg", first)), files_body(("two.jpg", second))
    reader, writer = await open_connection(server)
    # The head and the body's first bytes in one read: aiohttp parses those, the reader the rest.
    pipelined = (
        upload_request(body1, port)
        + body1
        + request_head("GET", "/", port=port)
        + upload_request(body2, port)
        + body2
    )
    writer.write(pipelined)
    answers = [await read_response(reader) for _ in range(3)]
    writer.close()
    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[1].json() == {"message": "Hello World"}
    assert (upload_dir / "one.jpg").read_bytes() == first
    assert (upload_dir / "two.jpg").read_bytes() == second
    assert len(taken) >= 1  # the second body may all have been parsed with the first
    assert not taken[0]._connection.trailer_reader.lost  # it followed the bodies read around it


async def test_a_tus_patch_is_read_around_the_parser_too(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    """A large tus PATCH (TL's 64 MiB) takes the reader a multipart body does: sent in pieces,
    it is stored byte for byte, and the connection serves what follows it."""
    port = server.server.port or 0
    data = photo(3 * MIB, 4)
    reader, writer = await open_connection(server)
    filename = base64.b64encode(b"big.jpg").decode()
    creation = {"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))}
    creation |= {"Upload-Metadata": f"filename {filename}", "Content-Length": "0"}
    writer.write(request_head("POST", "/api/tus/", creation, port=port))
    created = await read_response(reader)
    assert created.status == 201, created.body
    path = URL(created.headers["Location"]).path
    patch = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    patch |= {"Upload-Offset": "0", "Content-Length": str(len(data))}
    head = request_head("PATCH", path, patch, port=port)
    await send_in_pieces(writer, head + data + request_head("GET", "/", port=port), 5)
    patched, home = await read_response(reader), await read_response(reader)
    writer.close()
    assert patched.status == 204, patched.body
    assert patched.headers["Upload-Offset"] == str(len(data))
    assert home.status == 200
    assert len(taken) == 1
    assert (upload_dir / "big.jpg").read_bytes() == data


async def test_a_body_sent_after_100_continue(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    data = photo(2 * MIB, 3)
    body = files_body(("later.jpg", data))
    reader, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0, Expect="100-continue"))
    interim = await read_head(reader)
    assert interim.status == 100
    await send_in_pieces(writer, body, 3)
    response = await read_response(reader)
    writer.close()
    assert response.status == 200, response.body
    assert (upload_dir / "later.jpg").read_bytes() == data
    assert len(taken) == 1


async def test_a_chunked_body_takes_aiohttps_path(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    data = photo(2 * MIB, 4)
    body = chunked(files_body(("chunked.jpg", data)))
    head = {**multipart_headers(), "Transfer-Encoding": "chunked"}
    reader, writer = await open_connection(server)
    writer.write(request_head("POST", "/api/upload", head, port=server.server.port or 0))
    await send_in_pieces(writer, body, 4)
    response = await read_response(reader)
    writer.close()
    assert response.status == 200, response.body
    assert (upload_dir / "chunked.jpg").read_bytes() == data
    assert taken == []


async def test_after_an_early_refusal_the_rest_is_dropped_and_the_connection_goes_on(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    port = server.server.port or 0
    refused = files_body(("notes.txt", os.urandom(4 * MIB)))
    accepted = photo(2 * MIB, 5)
    body = files_body(("after.jpg", accepted))
    reader, writer = await open_connection(server)
    writer.write(upload_request(refused, port) + refused[: 256 * 1024])
    answer = await read_response(reader)  # before the rest is sent
    assert answer.status == 415, answer.body
    writer.write(refused[256 * 1024 :] + upload_request(body, port) + body)
    after = await read_response(reader)
    writer.close()
    assert after.status == 200, after.body
    assert (upload_dir / "after.jpg").read_bytes() == accepted
    assert len(taken) == 2


async def test_a_stalled_body_is_a_408_and_leaves_nothing(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    body = files_body(("stalled.jpg", photo(4 * MIB, 6)))
    reader, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0) + body[: 2 * MIB])
    response = await read_response(reader)
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.status == 408, response.body
    assert rest == b""  # and the connection is closed
    assert len(taken) == 1
    assert_nothing_stored(upload_dir)


async def test_a_client_gone_mid_body_leaves_nothing_and_the_server_serves(
    server: Client, upload_dir: Path, taken: list[BodyReader]
) -> None:
    body = files_body(("gone.jpg", photo(4 * MIB, 7)))
    _, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0) + body[: 2 * MIB])
    await writer.drain()
    await eventually(lambda: bool(temp_files(upload_dir)))  # it really was mid-body
    writer.transport.abort()
    await eventually(lambda: not temp_files(upload_dir))
    assert len(taken) == 1
    await upload_ok(server, ("next.jpg", JPEG))
    assert stored_files(upload_dir) == ["next.jpg"]


def test_while_a_long_body_is_read_the_pool_keeps_what_the_hashing_thread_may_still_read() -> None:
    # The hasher holds views of up to BUDGET_BYTES of pieces after the reader gave their blocks
    # back; once it lets go, the reader takes those blocks again, none made anew.
    pool = BlockPool(size=1024)
    pool.started(long=True)
    count = BUDGET_BYTES // BLOCK
    blocks = [pool.take() for _ in range(count)]
    hashing = [memoryview(block)[:10] for block in blocks]
    for block in blocks:
        pool.give(block)
    hashing.clear()
    again = [pool.take() for _ in range(count)]
    assert {id(block) for block in again} == {id(block) for block in blocks}
    for block in again:
        pool.give(block)
    pool.started(long=False)
    pool.finished(long=True)  # a short body goes on: the pool keeps what a short one needs
    assert pool.long_readers == 0
    taken = [pool.take() for _ in range(count)]  # held: no id is reused
    assert len({id(block) for block in taken} & {id(block) for block in blocks}) == _KEPT
    pool.finished(long=False)
    assert pool.readers == 0


def test_short_bodies_keep_a_few_blocks() -> None:
    pool = BlockPool(size=1024)
    pool.started(long=False)
    blocks = [pool.take() for _ in range(8)]
    for block in blocks:
        pool.give(block)
    again = [pool.take() for _ in range(8)]  # held: no id is reused
    assert len({id(block) for block in again} & {id(block) for block in blocks}) == _KEPT
    pool.finished(long=False)


def test_a_block_is_reused_only_when_no_view_of_it_is_left() -> None:
    pool = BlockPool(size=1024)
    block = pool.take()
    assert len(block) == 1024
    piece = memoryview(block)[10:20]
    assert _exported(block)
    pool.give(block)
    other = pool.take()
    assert other is not block  # a view of it is still alive
    pool.give(other)
    del piece
    assert not _exported(block)
    assert pool.take() is block
    assert len(block) == 1024  # the test left its size as it was


async def test_a_small_body_is_read_as_the_parser_handed_it_on_not_joined(
    server: Client, upload_dir: Path, taken: list[BodyReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below MIN_BODY the body takes aiohttp's path: the scanner reads each piece the parser
    handed on, however many wait, never one new ``bytes`` of all of them (a copy more)."""
    reads: list[int] = []
    original = body_reader._parsed_pieces

    def spy(request: Any) -> Any:
        read = original(request)

        async def late_read() -> Any:
            if not reads:
                await asyncio.sleep(0.3)  # every piece has arrived, and waits
            data = await read()
            reads.append(len(data))
            return data

        return late_read

    monkeypatch.setattr(body_reader, "_parsed_pieces", spy)
    piece = body_reader.MIN_BODY // 6
    data = photo(4 * piece, 9)  # with the multipart framing, still under MIN_BODY
    body = files_body(("pieces.jpg", data))
    reader, writer = await open_connection(server)
    writer.write(upload_request(body, server.server.port or 0))
    for at in range(0, len(body), piece):
        writer.write(body[at : at + piece])
        await writer.drain()
        await asyncio.sleep(0.03)  # one read of the server's each
    response = await read_response(reader)
    writer.close()
    assert response.status == 200, response.body
    assert (upload_dir / "pieces.jpg").read_bytes() == data
    assert taken == []
    assert sum(reads) == len(body)
    assert len(reads) > 4, reads
    assert max(reads) <= piece, reads  # joined: one read of all four pieces
