"""Socket activation: the server takes the listening socket systemd passes (LISTEN_FDS), and a
restart drops no connection, since the socket, and its queue, outlive the process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.process.conftest import StartServer
from tests.server_process import WAIT_SECONDS

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture
def systemd_socket() -> Iterator[socket.socket]:
    """The listening socket clustr-aio.socket would make, held here as systemd holds it."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as sock:
        yield sock


def get_root(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as conn:
        conn.sendall(REQUEST)
        return receive_all(conn)


def receive_all(conn: socket.socket) -> bytes:
    conn.settimeout(WAIT_SECONDS)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_serves_on_the_passed_socket(
    server_factory: StartServer, systemd_socket: socket.socket
) -> None:
    port = systemd_socket.getsockname()[1]
    server = server_factory(listen_socket=systemd_socket)
    assert server.port == port
    assert b"Hello World" in get_root(port)
    assert "using 1 listening socket(s) passed by systemd" in server.logs
    assert f"listening on http://127.0.0.1:{port}" in server.logs
    assert server.stop() == 0


def test_a_restart_drops_no_connection(
    server_factory: StartServer, systemd_socket: socket.socket
) -> None:
    port = systemd_socket.getsockname()[1]
    first = server_factory(listen_socket=systemd_socket)
    answers: list[bytes] = []
    failures: list[tuple[float, BaseException]] = []
    done = threading.Event()

    def keep_asking() -> None:  # a client busy throughout the restart, one connection each
        while not done.is_set():
            try:
                answers.append(get_root(port))
            except OSError as error:
                failures.append((time.monotonic(), error))

    client = threading.Thread(target=keep_asking, daemon=True)
    client.start()
    stopping = time.monotonic()
    assert first.stop() == 0
    stopped = time.monotonic() - stopping

    # No server runs now: a connection still succeeds, and waits in the socket's queue…
    waiting = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    waiting.sendall(REQUEST)
    second = server_factory(listen_socket=systemd_socket)
    # …until the next server answers it.
    assert b"Hello World" in receive_all(waiting)
    waiting.close()
    served_before = len(answers)
    while len(answers) < served_before + 5 and not failures:
        threading.Event().wait(0.01)
    done.set()
    client.join(WAIT_SECONDS)
    assert failures == [], (
        f"stopped after {stopped:.3f}s, failures at "
        f"{[(round(at - stopping, 3), error) for at, error in failures]}\n"
        f"{first.logs}\n{second.logs}"
    )
    assert all(b"200 OK" in answer for answer in answers)
    assert second.stop() == 0
