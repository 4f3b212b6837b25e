"""A client that goes away mid-upload leaves nothing on disk, one that goes away mid-download
leaves no error behind, and the server carries on.

Run twice over: in the pytest-aiohttp server (which cancels the handler when the connection
drops: ``handler_cancellation=True``) and in a real ``python -m clustr_aio`` (which does not, as
in production: the handler sees the read fail instead). The two take different code paths.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from clustr_aio.storage.local import INCOMING_DIR
from tests.conftest import JPEG, PNG, Client, stored_files, temp_files
from tests.http.helpers import (
    chunk,
    eventually,
    multipart_headers,
    part_head,
    request_head,
    upload_ok,
)
from tests.server_process import RunningServer, start_server

MIB = 1024 * 1024


def leftovers(upload_dir: Path) -> list[Path]:
    """Everything under .incoming but the running process's own directory and its lock."""
    incoming = upload_dir / INCOMING_DIR
    own_dirs = [d for d in incoming.iterdir() if (d / ".lock").exists()]
    assert len(own_dirs) == 1, own_dirs
    # os.walk, not rglob: a batch folder the server removes meanwhile is skipped, not an error.
    return sorted(
        Path(parent, name)
        for parent, folders, names in os.walk(own_dirs[0])
        for name in (*folders, *names)
        if name != ".lock"
    )


async def vanish_mid_upload(host: str, port: int, upload_dir: Path, how: str) -> None:
    """Send one whole file and 3 MiB of a second, wait until the server is writing it to
    disk, then drop the connection (FIN or RST) without sending the rest."""
    started = part_head("a.jpg") + JPEG + b"\r\n" + part_head("b.png") + PNG + bytes(3 * MIB)
    if how == "chunked":
        headers = {**multipart_headers(), "Transfer-Encoding": "chunked"}
        started = chunk(started)
    else:
        headers = {**multipart_headers(), "Content-Length": str(64 * MIB)}
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request_head("POST", "/api/upload", headers, port=port) + started)
    await writer.drain()
    await eventually(lambda: bool(temp_files(upload_dir)))  # it really was mid-upload
    if how == "reset":
        writer.transport.abort()
    else:
        writer.close()
    await eventually(lambda: not leftovers(upload_dir))
    assert stored_files(upload_dir) == []
    assert temp_files(upload_dir) == []


@pytest.mark.both_loops  # it touches transports: asyncio's and uvloop's differ
@pytest.mark.parametrize("how", ["close", "reset", "chunked"])
async def test_vanishing_client_leaves_nothing_in_process(
    client: Client, upload_dir: Path, how: str
) -> None:
    await vanish_mid_upload(client.server.host, client.server.port or 0, upload_dir, how)
    await upload_ok(client, ("next.jpg", JPEG))
    assert stored_files(upload_dir) == ["next.jpg"]


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """A real server on each event loop (``EVENT_LOOP``), shared by the cases of one loop."""
    env = {"FSYNC": "true", "EVENT_LOOP": str(request.param)}
    with start_server(env, directory=tmp_path_factory.mktemp("disconnect")) as server:
        yield server


@pytest.mark.parametrize("how", ["close", "reset", "chunked"])
async def test_vanishing_client_leaves_nothing_in_a_real_process(
    server: RunningServer, how: str
) -> None:
    upload_dir = server.upload_folder
    for name in stored_files(upload_dir):  # the previous case's "next" upload
        (upload_dir / name).unlink()
    await vanish_mid_upload("127.0.0.1", server.port, upload_dir, how)
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("files", JPEG, filename=f"next-{how}.jpg")
        async with session.post(f"{server.url}/api/upload", data=form) as response:
            assert response.status == 200, await response.text()
    assert stored_files(upload_dir) == [f"next-{how}.jpg"]
    assert server.process.poll() is None
    log = server.logs.splitlines()
    assert not any("Traceback" in line for line in log)
    # Without handler cancellation the handler itself saw the client go (the production path).
    assert any("client disconnected" in line for line in log)


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=100-"}], ids=["whole", "range"])
async def test_client_vanishing_mid_download_leaves_the_server_serving(
    server: RunningServer, headers: dict[str, str]
) -> None:
    # 16 MiB: more than the socket buffers take, so the sender is left waiting for room
    # (asyncio's loop.sendfile then) when the client resets the connection.
    data = bytes(range(256)) * (16 * MIB // 256)
    (server.upload_folder / "large.png").write_bytes(data)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head("GET", "/uploads/large.png", headers, port=server.port))
    await reader.readexactly(64 * 1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    writer.close()
    await asyncio.sleep(0.2)

    url = f"{server.url}/uploads/large.png"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status in (200, 206)
        assert await response.read() == data[100 if headers else 0 :]
    assert server.process.poll() is None
    assert not any("Traceback" in line or " ERROR " in line for line in server.logs.splitlines()), (
        server.logs
    )
