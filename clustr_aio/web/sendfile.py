"""Send a response head and a file's bytes to a client's socket in as few syscalls as possible.

asyncio's ``loop.sendfile`` is made for long transfers. Each call pauses reading, waits for an
empty transport buffer, takes the socket out of the transport table, ``fstat``s the file, then
registers and unregisters the socket with epoll around every partial send. For a photo of a few
hundred kilobytes that bookkeeping costs more than the copy itself, and the kernel's socket
buffer usually takes the whole photo in one ``sendfile(2)``. So :func:`send_head_and_file` first
sends in a plain loop, and only hands what is left to ``loop.sendfile`` if the socket fills up.

The head goes out with ``MSG_MORE``. asyncio sets ``TCP_NODELAY``, so without it the head
would travel alone in a small segment ahead of the file (what ``tcp_nopush`` spares nginx).

Measured with ``wrk -t1 -c16`` against a bare aiohttp app, each GET a 498 KB JPEG:

- ``loop.sendfile``: 0.19 ms user CPU per request;
- this module: 0.05 ms, at 9,400 req/s, nginx's own rate on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import IO, Any

from clustr_aio.compat import plain_socket

__all__ = ["SMALL_FILE", "send_head_and_file", "send_head_and_file_now"]

SMALL_FILE = 64 * 1024
"""Up to this size, :func:`send_head_and_file_now` reads the file and sends it with the head in
one ``send``: measured on loopback, 7.4 us of CPU against 13.9 us for a corked head and a
``sendfile`` of a 686-byte thumbnail."""


async def send_head_and_file(
    transport: asyncio.Transport, head: bytes, file: IO[Any], offset: int, count: int
) -> None:
    """Write ``head``, then ``count`` bytes of ``file`` from ``offset``, to the transport's peer.

    Raises ``ConnectionError`` if the client has gone (the same as ``loop.sendfile``).
    """
    if transport.is_closing():
        raise ConnectionResetError("Connection lost")
    sock = _socket_of(transport)
    if sock is None or transport.get_write_buffer_size():
        # Not a plain socket, or bytes already queued in the transport that must go first.
        transport.write(head)
        await asyncio.get_running_loop().sendfile(transport, file, offset, count)
        return
    sent = 0
    try:
        sent = sock.send(head, socket.MSG_MORE)
        if sent == len(head):
            out_fd, in_fd = sock.fileno(), file.fileno()
            while count:
                n = os.sendfile(out_fd, in_fd, offset, count)
                if n == 0:  # the file is shorter than its stat said: it was truncated
                    raise ConnectionAbortedError("the file shrank while it was being sent")
                offset += n
                count -= n
            return
    except BlockingIOError:  # the socket buffer is full: let asyncio wait for room
        pass
    if sent < len(head):
        transport.write(head[sent:])
    await asyncio.get_running_loop().sendfile(transport, file, offset, count)


def send_head_and_file_now(transport: asyncio.Transport, head: bytes, fd: int, count: int) -> None:
    """Write ``head`` and the first ``count`` bytes of the file ``fd`` without waiting, from a
    protocol callback: what the socket does not take at once is read from the file into the
    transport's buffer, which sends it as the client reads (so: for files of a bounded size).

    Raises ``ConnectionError`` if the client has gone, ``OSError`` for the file.
    """
    if transport.is_closing():
        raise ConnectionResetError("Connection lost")
    sock = _socket_of(transport)
    if sock is None or transport.get_write_buffer_size() or count <= SMALL_FILE:
        data = head + _read(fd, 0, count)
        sent = 0
        if sock is not None and not transport.get_write_buffer_size():
            with contextlib.suppress(BlockingIOError):
                sent = sock.send(data)
        if sent < len(data):
            transport.write(data[sent:] if sent else data)
        return
    sent = 0
    with contextlib.suppress(BlockingIOError):
        sent = sock.send(head, socket.MSG_MORE)
    if sent < len(head):
        transport.write(head[sent:] + _read(fd, 0, count))
        return
    offset = 0
    try:
        while offset < count:
            n = os.sendfile(sock.fileno(), fd, offset, count - offset)
            if n == 0:
                raise ConnectionAbortedError("the file shrank while it was being sent")
            offset += n
    except BlockingIOError:  # the socket buffer is full: the transport sends the rest
        transport.write(_read(fd, offset, count - offset))


def _read(fd: int, offset: int, count: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise ConnectionAbortedError("the file shrank while it was being sent")
    return data


def _socket_of(transport: asyncio.Transport) -> socket.socket | None:
    if transport.get_extra_info("sslcontext") is not None:
        return None  # the socket carries TLS records: every byte must go through the transport
    # get_extra_info gives asyncio's TransportSocket, which has no send(); the socket is inside.
    return plain_socket(transport)
