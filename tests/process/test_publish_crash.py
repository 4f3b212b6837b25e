"""kill -9 at any instant of a large batch's publish: after the restart, the batch is either
wholly published (killed after its commit) or not at all (killed before it), and nothing else in
the folder is touched. The server pauses where the test says (CLUSTR_AIO_TEST_PUBLISH_PAUSE, see
clustr_aio.storage.journal), so each kill point is hit exactly, not by luck."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from clustr_aio.storage.journal import PAUSE_VARIABLE
from tests.conftest import JPEG, stored_files, temp_files
from tests.process.conftest import StartServer
from tests.server_process import RunningServer

FILES = 3000
BOUNDARY = "crashTestBoundary"
NAMES = [f"img-{n:04}.jpg" for n in range(FILES)]


def multipart_body() -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + JPEG
        + n.to_bytes(2, "big")
        + b"\r\n"
        for n, name in enumerate(NAMES)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def send_upload(server: RunningServer, body: bytes) -> threading.Thread:
    """POST the batch from a thread that waits for an answer which never comes."""

    def post() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            head = (
                f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
            )
            try:
                sock.sendall(head.encode() + body)
                sock.recv(1)  # b"" or a reset once the server is killed
            except OSError:
                pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("point", "linked"),
    [("link 0", 0), ("link 1", 1), ("link 1500", 1500), ("commit", FILES)],
)
def test_a_kill_during_publish_leaves_none_of_the_batch(
    server_factory: StartServer, tmp_path: Path, point: str, linked: int
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    before = {"img-0000.jpg": b"an older img-0000", "keep.png": b"unrelated"}
    for name, data in before.items():
        (folder / name).write_bytes(data)
    server = server_factory({"UPLOAD_FOLDER": str(folder), PAUSE_VARIABLE: point})
    client = send_upload(server, multipart_body())
    server.wait_for_log(f"publish paused at {point}")

    server.kill()
    client.join(30)
    # The kill really hit mid-publish: `linked` of the batch's files are in the folder.
    assert len(stored_files(folder)) == len(before) + linked
    # Someone stores a file under a name the batch had taken: it is theirs, not the batch's.
    replaced = stored_files(folder)[-1] if linked > 1 else None
    if replaced is not None:
        (folder / replaced).unlink()
        (folder / replaced).write_bytes(b"stored later")
        before[replaced] = b"stored later"

    restarted = server_factory({"UPLOAD_FOLDER": str(folder)})
    assert stored_files(folder) == sorted(before)
    for name, data in before.items():
        assert (folder / name).read_bytes() == data
    assert temp_files(folder) == []
    assert "rolled back 1 publish(es) that ended with process" in restarted.logs
    restarted.stop()
