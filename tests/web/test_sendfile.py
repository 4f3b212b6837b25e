"""``send_head_and_file`` over real TCP sockets: the bytes arrive whole and in order, whichever
way they go (the socket taking everything, a full socket, bytes already queued, TLS), on
asyncio's loop (whose ``loop.sendfile`` takes over a full socket) and on uvloop (which has
none: the rest goes through the transport)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import pytest
import trustme

from clustr_aio.web.sendfile import send_head_and_file

pytestmark = pytest.mark.both_loops  # they touch transports: asyncio's and uvloop's differ

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
FILE_SIZE = 1024 * 1024


@dataclass
class Connection:
    """The server's side of one accepted connection, and the client's reader."""

    server: asyncio.StreamWriter
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def transport(self) -> asyncio.Transport:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        return cast(asyncio.Transport, self.server.transport)

    async def send(self, file: IO[bytes], offset: int, count: int) -> None:
        await send_head_and_file(self.transport, HEAD, file, offset, count, drain=self.server.drain)


async def connect(*, tls: bool = False) -> AsyncIterator[Connection]:
    """A server that accepts one connection, and a client connected to it (over TLS with a
    throwaway CA if ``tls``)."""
    server_tls = client_tls = None
    if tls:
        ca = trustme.CA()
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_tls)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls)
    server_side = await accepted
    try:
        yield Connection(server_side, reader, writer)
    finally:
        server_side.close()
        writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def connection() -> AsyncIterator[Connection]:
    async for made in connect():
        yield made


@pytest.fixture
async def tls_connection() -> AsyncIterator[Connection]:
    async for made in connect(tls=True):
        yield made


def data_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(size))
    return path


async def test_head_then_the_range_of_the_file(connection: Connection, tmp_path: Path) -> None:
    path = data_file(tmp_path, 300_000)
    with path.open("rb") as file:
        await connection.send(file, 1000, 250_000)
    received = await connection.reader.readexactly(len(HEAD) + 250_000)
    assert received == HEAD + path.read_bytes()[1000:251_000]
    # The socket was borrowed by its descriptor, never closed: the connection goes on.
    connection.transport.write(b"next")
    assert await connection.reader.readexactly(4) == b"next"


async def test_over_tls_every_byte_goes_through_the_transport(
    tls_connection: Connection, tmp_path: Path
) -> None:
    # The socket under a TLS transport carries records: plain bytes written to it directly
    # would break the connection.
    path = data_file(tmp_path, 300_000)
    with path.open("rb") as file:
        await tls_connection.send(file, 0, 300_000)
    received = await tls_connection.reader.readexactly(len(HEAD) + 300_000)
    assert received == HEAD + path.read_bytes()


async def test_a_full_socket_hands_the_rest_to_asyncio(
    connection: Connection, tmp_path: Path
) -> None:
    # A send buffer far smaller than the file, and a client that reads only later: the plain
    # sendfile loop meets EAGAIN, and loop.sendfile must carry on from the right offset.
    connection.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    path = data_file(tmp_path, FILE_SIZE)
    with path.open("rb") as file:
        sending = asyncio.create_task(connection.send(file, 0, FILE_SIZE))
        await asyncio.sleep(0.05)
        assert not sending.done(), "the whole file fit: this test no longer tests the fallback"
        received = await connection.reader.readexactly(len(HEAD) + FILE_SIZE)
        await sending
    assert received == HEAD + path.read_bytes()


async def test_bytes_queued_in_the_transport_go_first(
    connection: Connection, tmp_path: Path
) -> None:
    # asyncio holds what the socket did not take until the loop sees the socket writable. If
    # the client reads in between, the socket has room while bytes still wait in asyncio:
    # the head must queue up behind them, not overtake them.
    queued = b"q" * (16 * 1024 * 1024)
    connection.transport.write(queued)
    assert connection.transport.get_write_buffer_size() > 0
    client = connection.writer.get_extra_info("socket")
    head_of_queue = b""
    with socket.socket(fileno=os.dup(client.fileno())) as same_client:  # already non-blocking
        select.select([same_client], [], [], 5)
        with contextlib.suppress(BlockingIOError):  # read what is there; the loop is not running
            while len(head_of_queue) < len(queued) // 2:
                head_of_queue += same_client.recv(len(queued) // 2 - len(head_of_queue))
    assert head_of_queue
    assert connection.transport.get_write_buffer_size() > 0
    path = data_file(tmp_path, 100_000)
    with path.open("rb") as file:
        sending = asyncio.create_task(connection.send(file, 0, 100_000))
        rest = await connection.reader.readexactly(
            len(queued) - len(head_of_queue) + len(HEAD) + 100_000
        )
        await sending
    assert head_of_queue + rest == queued + HEAD + path.read_bytes()


async def test_a_file_shorter_than_promised_aborts(connection: Connection, tmp_path: Path) -> None:
    # The client was promised more bytes than there are (the file was truncated after its
    # stat): the connection must end, not wait for bytes that never come.
    path = data_file(tmp_path, 1000)
    with path.open("rb") as file, pytest.raises(ConnectionAbortedError):
        await connection.send(file, 0, 5000)


async def test_a_closing_transport_is_a_lost_connection(
    connection: Connection, tmp_path: Path
) -> None:
    connection.transport.close()
    path = data_file(tmp_path, 1000)
    with path.open("rb") as file, pytest.raises(ConnectionResetError):
        await connection.send(file, 0, 1000)
