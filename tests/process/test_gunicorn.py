"""The documented alternative process manager: gunicorn with aiohttp's GunicornWebWorker
serving ``clustr_aio.gunicorn_app:app``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import JPEG, stored_files, temp_files
from tests.process.slow_client import jpeg_bytes, upload_in_flight
from tests.server_process import WAIT_SECONDS, free_port, server_env, wait_until

MiB = 1024 * 1024


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    upload_folder: Path
    log_path: Path

    @property
    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def answers(self) -> bool:
        assert self.process.poll() is None, self.logs
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    upload_folder = tmp_path / "uploads"
    upload_folder.mkdir()
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "clustr_aio.gunicorn_app:app"),
                *("--worker-class", "aiohttp.GunicornWebWorker", "--workers", "2"),
                *("--bind", f"127.0.0.1:{port}", "--graceful-timeout", "45"),
            ],
            cwd=tmp_path,
            env=server_env(upload_folder, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(process, port, upload_folder, log_path)
    try:
        # Both workers booted (they log it as they start), not only the first to answer.
        wait_until(
            lambda: server.answers() and server.logs.count("Booting worker") >= 2,
            lambda: f"gunicorn's two workers to answer GET /:\n{server.logs}",
        )
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT_SECONDS)


def post_file(port: int, filename: str, data: bytes) -> dict[str, object]:
    boundary = "gunicornTestBoundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"'
            f"\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as reply:
        assert reply.status == 200
        result: dict[str, object] = json.load(reply)
        return result


def test_gunicorn_serves_uploads_with_two_workers(gunicorn: Gunicorn) -> None:
    for n in range(4):
        reply = post_file(gunicorn.port, f"g{n}.jpg", JPEG)
        assert reply["message"] == "Successfully uploaded 1 files"
    assert stored_files(gunicorn.upload_folder) == ["g0.jpg", "g1.jpg", "g2.jpg", "g3.jpg"]
    assert gunicorn.logs.count("Booting worker") == 2


def test_gunicorn_workers_drain_on_sigterm(gunicorn: Gunicorn) -> None:
    data = jpeg_bytes(3 * MiB)
    upload = upload_in_flight(gunicorn.port, gunicorn.upload_folder, "slow.jpg", data)
    gunicorn.process.send_signal(signal.SIGTERM)
    outcome = upload.outcome()
    assert outcome.status == 200, (outcome, gunicorn.logs)
    assert gunicorn.process.wait(WAIT_SECONDS) == 0
    assert (gunicorn.upload_folder / "slow.jpg").read_bytes() == data
    assert temp_files(gunicorn.upload_folder) == []
