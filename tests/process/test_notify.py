"""What a real server process tells systemd over ``NOTIFY_SOCKET``."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.process.conftest import StartServer
from tests.server_process import wait_until


def test_ready_once_listening_with_status_and_mainpid(server_factory: StartServer) -> None:
    server = server_factory()
    # READY=1 has arrived (start_server waited for it): the port must already accept.
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    fields = dict(server.notify.fields())
    assert fields["READY"] == "1"
    assert fields["MAINPID"] == str(server.pid)
    assert fields["STATUS"] == f"serving on http://127.0.0.1:{server.port}"


def test_abstract_notify_socket(server_factory: StartServer) -> None:
    server = server_factory(abstract_notify_socket=True)
    assert server.notify.address.startswith("@")
    assert server.notify.has("READY=1")


def test_stopping_is_announced_before_exit(server_factory: StartServer) -> None:
    server = server_factory()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    keys = [key for key, _ in server.notify.fields()]
    assert keys.index("READY") < keys.index("STOPPING")
    statuses = [value for key, value in server.notify.fields() if key == "STATUS"]
    assert statuses[-1].startswith("stopping: draining 0 request(s)")


def test_watchdog_pings_at_half_the_timeout(server_factory: StartServer) -> None:
    # WATCHDOG_USEC=0.2 s: a ping every 0.1 s.
    server = server_factory({"WATCHDOG_USEC": "200000"})
    wait_until(lambda: server.notify.received().count("WATCHDOG=1") >= 3, "three watchdog pings")
    assert server.stop() == 0


def test_no_watchdog_pings_for_another_process(server_factory: StartServer) -> None:
    # WATCHDOG_PID names another process: the watchdog is not ours to feed. Were it ours, the
    # first ping would go out right after READY=1, before this request is answered.
    server = server_factory({"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"Hello World" in sock.recv(4096)
    assert server.stop() == 0
    assert "WATCHDOG=1" not in server.notify.received()


def test_no_ready_when_the_upload_folder_cannot_be_used(
    server_factory: StartServer, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "uploads-file"
    not_a_folder.write_bytes(b"")
    server = server_factory({"UPLOAD_FOLDER": str(not_a_folder)}, wait_ready=False)
    assert server.wait() == 1
    assert not server.notify.has("READY=1")
