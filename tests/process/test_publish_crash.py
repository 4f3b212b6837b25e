"""kill -9 at any instant of a batch's publish and commit: after the restart, the batch is either
wholly stored, published and catalogued (killed after its seal) or not at all (killed before
it: between two links, with every file linked, or with its records committed), and nothing
else in the folder is touched. The server pauses where the test says
(CLUSTR_AIO_TEST_PUBLISH_PAUSE, see clustr_aio.storage.journal), so each kill point is hit
exactly, not by luck."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from clustr_aio.storage.journal import PAUSE_VARIABLE
from tests.conftest import JPEG, stored_files, temp_files
from tests.process.conftest import StartServer
from tests.server_process import WAIT_SECONDS, RunningServer

FILES = 3000
BOUNDARY = "crashTestBoundary"


def names_of(files: int) -> list[str]:
    return [f"img-{n:04}.jpg" for n in range(files)]


def multipart_body(names: list[str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + JPEG
        + n.to_bytes(2, "big")
        + b"\r\n"
        for n, name in enumerate(names)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def send_upload(server: RunningServer, body: bytes) -> tuple[threading.Thread, list[bytes]]:
    """POST the batch from a thread that waits for an answer which never comes; what it
    received is in the list."""
    received: list[bytes] = []

    def post() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            head = (
                f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
            )
            try:
                sock.sendall(head.encode() + body)
                received.append(sock.recv(1))  # b"" or a reset once the server is killed
            except OSError:
                pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, received


def catalogued(server: RunningServer) -> list[str]:
    """Every stored name the catalog lists, page by page."""
    names: list[str] = []
    cursor = ""
    while True:
        url = f"{server.url}/api/files?limit=1000{cursor}"
        with urllib.request.urlopen(url, timeout=WAIT_SECONDS) as response:
            page = json.load(response)
        names += [item["stored_filename"] for item in page["data"]]
        if page["next_cursor"] is None:
            return sorted(names)
        cursor = f"&cursor={page['next_cursor']}"


def kill_at(
    server_factory: StartServer, folder: Path, point: str, files: int, env: dict[str, str]
) -> list[bytes]:
    """Upload ``files`` files, kill the server paused at ``point``; what the client got."""
    server = server_factory({**env, "UPLOAD_FOLDER": str(folder), PAUSE_VARIABLE: point})
    client, received = send_upload(server, multipart_body(names_of(files)))
    server.wait_for_log(f"publish paused at {point}")
    server.kill()
    client.join(30)
    return received


@pytest.mark.parametrize(
    ("point", "linked"),
    [
        ("link 0", 0),
        ("link 1", 1),
        ("link 1500", 1500),
        ("linked", FILES),  # every file linked and flushed, no record yet
        ("seal", FILES),  # the records committed too: not sealed, never answered
    ],
)
def test_a_kill_before_the_seal_leaves_none_of_the_batch(
    server_factory: StartServer, tmp_path: Path, point: str, linked: int
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    before = {"img-0000.jpg": b"an older img-0000", "keep.png": b"unrelated"}
    for name, data in before.items():
        (folder / name).write_bytes(data)
    received = kill_at(server_factory, folder, point, FILES, {})
    assert received in ([], [b""])  # no answer, not one byte of it
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
    # Not one record of the batch: the files planted beside it are adopted, nothing else.
    assert catalogued(restarted) == sorted(before)
    restarted.stop()


def test_a_kill_after_the_seal_leaves_the_batch_whole_and_catalogued(
    server_factory: StartServer, tmp_path: Path
) -> None:
    """Sealed, not answered yet: the batch stays, complete (see the README's crash recovery:
    an unanswered batch that was sealed is kept)."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "img-0000.jpg").write_bytes(b"an older img-0000")
    received = kill_at(server_factory, folder, "sealed", FILES, {})
    assert received in ([], [b""])
    batch = ["img-0000-1.jpg", *names_of(FILES)[1:]]
    assert stored_files(folder) == sorted([*batch, "img-0000.jpg"])

    restarted = server_factory({"UPLOAD_FOLDER": str(folder)})
    assert stored_files(folder) == sorted([*batch, "img-0000.jpg"])
    assert (folder / "img-0001.jpg").read_bytes() == JPEG + (1).to_bytes(2, "big")
    assert temp_files(folder) == []
    assert "rolled back" not in restarted.logs
    assert catalogued(restarted) == sorted([*batch, "img-0000.jpg"])
    restarted.stop()


@pytest.mark.parametrize(("point", "kept"), [("linked", False), ("seal", False), ("sealed", True)])
def test_a_one_file_upload_is_kept_only_once_sealed(
    server_factory: StartServer,
    tmp_path: Path,
    database_url: str | None,
    point: str,
    kept: bool,
) -> None:
    """A batch of one file has no journal: its temporary file, linked until the seal, tells
    the next start to roll it back. With either catalog."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    env = {"DATABASE_URL": database_url} if database_url else {}
    kill_at(server_factory, folder, point, 1, env)
    assert stored_files(folder) == ["img-0000.jpg"]

    restarted = server_factory({**env, "UPLOAD_FOLDER": str(folder)})
    expected = ["img-0000.jpg"] if kept else []
    assert stored_files(folder) == expected
    assert catalogued(restarted) == expected
    assert temp_files(folder) == []
    assert ("rolled back 1 publish(es)" in restarted.logs) is not kept
    if point == "seal":  # its record was committed: the reconciliation drops it
        assert "0 files without a record adopted, 1 records without a file removed" in (
            restarted.logs
        )
    restarted.stop()
