"""WORKERS=N: a supervisor and N worker processes on one listening socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from clustr_aio.storage.local import INCOMING_DIR
from tests.conftest import JPEG, stored_files, temp_files
from tests.process.conftest import StartServer
from tests.process.slow_client import SlowUpload, jpeg_bytes, upload_in_flight
from tests.server_process import WAIT_SECONDS, RunningServer, wait_until

MiB = 1024 * 1024


def get_root(server: RunningServer) -> dict[str, str]:
    with urllib.request.urlopen(server.url + "/", timeout=WAIT_SECONDS) as reply:
        result: dict[str, str] = json.load(reply)
        return result


def incoming_dir_of(pid: int, upload_folder: Path) -> Path:
    """The ``.incoming/<id>`` directory a live worker holds locked (its open ``.lock``)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.name == ".lock" and target.parent.parent == upload_folder / ".incoming":
            return target.parent
    raise AssertionError(f"process {pid} holds no .incoming directory")


def replacement_of(server: RunningServer, gone: int, before: list[int]) -> int:
    """Wait until a new worker has replaced ``gone`` and serves; its pid."""
    wait_until(
        lambda: gone not in server.worker_pids() and len(server.worker_pids()) == len(before),
        "a replacement worker",
    )
    (new,) = set(server.worker_pids()) - set(before)
    server.wait_for_worker_serving(new)
    return new


def test_ready_only_once_every_worker_serves(server_factory: StartServer) -> None:
    server = server_factory(workers=3)
    workers = server.worker_pids()
    assert len(workers) == 3
    # The supervisor logs each worker's readiness before it reports READY=1.
    for pid in workers:
        assert f"(pid {pid}) serving" in server.logs
    fields = dict(server.notify.fields())
    assert fields["MAINPID"] == str(server.pid)
    assert fields["STATUS"] == "3 workers serving"
    assert get_root(server) == {"message": "Hello World"}


# A text line's level, pid and logger, after its timestamp (or, under the journal, its priority).
TEXT_LINE = re.compile(r"(?:\d{4}-\d\d-\d\d \S+|<[0-7]>)(?: |)(\w+) \[pid (\d+)\] ([\w.]+): ")


def pid_and_message(line: str, log_format: str) -> tuple[int, str]:
    """Which process wrote the log ``line``, and what it says."""
    if log_format == "json":
        record = json.loads(line)
        assert isinstance(record["pid"], int), line
        return record["pid"], record["message"]
    match = TEXT_LINE.match(line)
    assert match, line
    return int(match[2]), line[match.end() :]


@pytest.mark.parametrize(
    ("log_format", "journal"), [("text", False), ("json", False), ("text", True)]
)
def test_every_log_line_names_the_process_that_wrote_it(
    server_factory: StartServer, log_format: str, journal: bool
) -> None:
    server = server_factory({"LOG_FORMAT": log_format}, workers=2, journal=journal)
    workers = server.worker_pids()
    for _ in range(4):  # access lines, from whichever worker accepts
        assert get_root(server) == {"message": "Hello World"}
    wait_until(lambda: server.logs.count("GET /") == 4, "four access lines")
    assert server.stop() == 0
    lines = [pid_and_message(line, log_format) for line in server.logs.splitlines()]
    by_pid: dict[int, list[str]] = {}
    for pid, message in lines:
        by_pid.setdefault(pid, []).append(message)
    assert set(by_pid) == {server.pid, *workers}, server.logs
    supervisor = by_pid[server.pid]
    for pid in workers:
        assert any(f"(pid {pid}) started" in message for message in supervisor)
        assert any(message.startswith("clustr_aio listening on") for message in by_pid[pid])
    assert any(message.startswith("supervisor: SIGTERM received") for message in supervisor)
    assert not any("listening on" in message or "GET /" in message for message in supervisor)


def test_a_killed_worker_is_replaced(server_factory: StartServer) -> None:
    server = server_factory(workers=2)
    before = server.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    new = replacement_of(server, before[0], before)
    assert new not in before
    assert "killed by SIGKILL; starting a new one" in server.logs
    for _ in range(10):  # whichever worker accepts, every request is served
        assert get_root(server) == {"message": "Hello World"}
    statuses = [value for key, value in server.notify.fields() if key == "STATUS"]
    assert any(status.startswith("replacing worker ") for status in statuses)
    assert server.stop() == 0


def test_a_stop_while_a_replacement_starts_is_clean(server_factory: StartServer) -> None:
    """SIGTERM reaching a replacement worker before it can drain kills it outright; that
    is still a clean stop (exit 0, so systemd does not mark the unit failed)."""
    server = server_factory(workers=2)
    before = server.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # no sleep: catch it early
        assert time.monotonic() < deadline, "no replacement worker"
        new = set(server.worker_pids()) - set(before)
        if not new:
            continue
        (replacement,) = new
        # Freeze it while still starting, so that the stop reaches it before it can drain.
        try:
            os.kill(replacement, signal.SIGSTOP)
            break
        except ProcessLookupError:  # a child that lived an instant (not the worker): look again
            continue
    server.signal(signal.SIGTERM)
    wait_until(lambda: "stopping 2 worker(s)" in server.logs, "the supervisor to forward the stop")
    # Under load the supervisor may already have killed the frozen worker (its stop timed out).
    with contextlib.suppress(ProcessLookupError):
        os.kill(replacement, signal.SIGCONT)
    assert server.wait() == 0, server.logs


def test_a_hung_worker_is_killed_and_replaced(server_factory: StartServer) -> None:
    # WATCHDOG_USEC=1 s: the supervisor pings systemd every 0.5 s, and a worker silent for 1 s
    # is hung. SIGSTOP freezes one, exactly as an event loop stuck in a blocking call would.
    server = server_factory({"WATCHDOG_USEC": "1000000"}, workers=2)
    wait_until(lambda: server.notify.received().count("WATCHDOG=1") >= 2, "supervisor pings")
    before = server.worker_pids()
    os.kill(before[1], signal.SIGSTOP)
    replacement_of(server, before[1], before)
    assert "sent no heartbeat for" in server.logs
    assert get_root(server) == {"message": "Hello World"}
    assert server.stop() == 0


def test_sigterm_drains_every_worker(server_factory: StartServer) -> None:
    server = server_factory(workers=2)
    data = jpeg_bytes(3 * MiB)
    upload = upload_in_flight(server.port, server.upload_folder, "slow.jpg", data)
    server.signal(signal.SIGTERM)
    outcome = upload.outcome()
    assert outcome.status == 200, (outcome, server.logs)
    assert server.wait() == 0
    assert (server.upload_folder / "slow.jpg").read_bytes() == data
    assert server.logs.count("exited with status 0") == 2
    assert server.notify.has("STOPPING=1")
    assert server.worker_pids() == []


def test_a_worker_that_cannot_start_fails_the_service(
    server_factory: StartServer, tmp_path: Path
) -> None:
    # A folder the start-up checks accept (it exists and takes files) but where each worker's
    # storage cannot open: its .incoming directory is taken by a file.
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / INCOMING_DIR).write_bytes(b"")
    server = server_factory({"UPLOAD_FOLDER": str(folder)}, workers=2, wait_ready=False)
    assert server.wait() == 1  # not a loop of workers failing forever
    assert "before it served; stopping" in server.logs
    assert not server.notify.has("READY=1")


def test_workers_exit_when_the_supervisor_is_killed(server_factory: StartServer) -> None:
    server = server_factory(workers=2)
    workers = server.worker_pids()
    os.kill(server.pid, signal.SIGKILL)
    server.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until init reaps it: dead all the same.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

    # Their next heartbeat finds the pipe closed: they drain and exit on their own.
    wait_until(lambda: all(gone(pid) for pid in workers), "the orphaned workers to exit")


def test_a_starting_worker_keeps_a_live_siblings_files(server_factory: StartServer) -> None:
    server = server_factory(workers=2)
    data = jpeg_bytes(3 * MiB)
    upload = upload_in_flight(server.port, server.upload_folder, "slow.jpg", data)
    (temp,) = temp_files(server.upload_folder)
    before = server.worker_pids()
    owner = next(p for p in before if temp.is_relative_to(incoming_dir_of(p, server.upload_folder)))
    (sibling,) = set(before) - {owner}
    sibling_dir = incoming_dir_of(sibling, server.upload_folder)

    os.kill(sibling, signal.SIGKILL)
    replacement_of(server, sibling, before)  # its storage opened and swept .incoming

    assert not sibling_dir.exists()  # the dead sibling's directory was swept…
    assert temp.exists()  # …the live owner's upload was not
    outcome = upload.outcome()
    assert outcome.status == 200, (outcome, server.logs)
    assert (server.upload_folder / "slow.jpg").read_bytes() == data
    assert server.stop() == 0


def test_killing_the_worker_mid_upload_publishes_nothing(server_factory: StartServer) -> None:
    server = server_factory(workers=2)
    upload = upload_in_flight(server.port, server.upload_folder, "partial.jpg", jpeg_bytes(3 * MiB))
    (temp,) = temp_files(server.upload_folder)
    before = server.worker_pids()
    owner = next(p for p in before if temp.is_relative_to(incoming_dir_of(p, server.upload_folder)))

    os.kill(owner, signal.SIGKILL)
    assert upload.outcome().error is not None  # the connection died with its worker
    replacement_of(server, owner, before)
    assert stored_files(server.upload_folder) == []
    assert not temp.exists()  # swept by the replacement
    assert temp_files(server.upload_folder) == []
    # And the service goes on: an upload now is stored.
    done = SlowUpload(server.port, "after.jpg", JPEG).start().outcome()
    assert done.status == 200, done
    assert stored_files(server.upload_folder) == ["after.jpg"]
    assert server.stop() == 0
