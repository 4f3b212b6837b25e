"""Graceful stop of a real server process: SIGTERM while an upload's body is on its way, on
each event loop (asyncio's listening sockets need a step before they close, uvloop's not)."""

from __future__ import annotations

import signal
import socket
import time

from tests.conftest import stored_files, temp_files
from tests.process.conftest import StartServer
from tests.process.slow_client import SlowUpload, jpeg_bytes, upload_in_flight
from tests.server_process import RunningServer, wait_until


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


MiB = 1024 * 1024


def begin_slow_upload(
    server: RunningServer, data: bytes, *, chunk: int, delay: float
) -> SlowUpload:
    """:func:`upload_in_flight` of ``slow.jpg``, its body still on its way."""
    upload = upload_in_flight(
        server.port, server.upload_folder, "slow.jpg", data, chunk=chunk, delay=delay
    )
    assert not upload.body_complete
    return upload


def test_sigterm_lets_an_upload_in_flight_finish(
    server_factory: StartServer, event_loop_env: dict[str, str]
) -> None:
    server = server_factory(event_loop_env)
    assert f"({event_loop_env['EVENT_LOOP']})" in server.logs
    data = jpeg_bytes(3 * MiB)  # after the burst, 64 KiB every 100 ms: about 2.4 s of body
    upload = begin_slow_upload(server, data, chunk=64 * 1024, delay=0.1)
    idle = socket.create_connection(("127.0.0.1", server.port))
    idle.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    assert b"Hello World" in idle.recv(4096)  # a kept-alive connection, now idle

    server.signal(signal.SIGTERM)

    # New connections are refused at once, while the upload is still being received…
    wait_until(lambda: connection_refused(server.port), "new connections to be refused")
    # …and the idle keep-alive connection is closed rather than left to its timeout.
    idle.settimeout(10)
    assert idle.recv(4096) == b""
    idle.close()
    assert not upload.body_complete, "the upload ended before the checks: make it slower"
    assert server.process.poll() is None

    outcome = upload.outcome()
    assert outcome.status == 200, outcome
    assert outcome.headers is not None
    assert outcome.headers["connection"].lower() == "close"
    assert outcome.json()["data"][0]["file_size"] == len(data)
    assert server.wait() == 0
    assert stored_files(server.upload_folder) == ["slow.jpg"]
    assert (server.upload_folder / "slow.jpg").read_bytes() == data
    assert temp_files(server.upload_folder) == []
    assert "drained in" in server.logs
    assert server.notify.has("STOPPING=1")


def test_uploads_still_running_at_the_timeout_are_aborted(
    server_factory: StartServer, event_loop_env: dict[str, str]
) -> None:
    server = server_factory({"SHUTDOWN_TIMEOUT": "1", **event_loop_env})
    # After the burst, 8 KiB every 100 ms: about 20 s, far beyond the 1 s drain timeout.
    upload = begin_slow_upload(server, jpeg_bytes(3 * MiB), chunk=8 * 1024, delay=0.1)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)

    assert server.wait() == 0
    outcome = upload.outcome()
    assert not upload.body_complete
    if outcome.status is not None:  # the answer came through before the connection closed
        assert outcome.status == 503, outcome
        assert "shutting down" in outcome.json()["detail"]
    else:
        assert outcome.error is not None
    assert stored_files(server.upload_folder) == []
    assert temp_files(server.upload_folder) == []
    assert "aborting 1 request(s) still in flight" in server.logs
    # Bounded by the timeout plus the fixed grace periods, not by the client's pace.
    assert time.monotonic() - signalled < 10


def test_sigterm_when_idle_exits_at_once(
    server_factory: StartServer, event_loop_env: dict[str, str]
) -> None:
    server = server_factory(event_loop_env)
    assert server.stop() == 0
    assert "drained in" in server.logs
    assert server.notify.has("STOPPING=1")
