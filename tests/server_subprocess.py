"""A real ``python -m clustr_aio`` in a subprocess on a free port, for tests that need the
whole program: its logging set-up, its environment handling, several processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from clustr_aio.config import SETTINGS

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0  # seconds; a loaded 2-core CI machine can be slow to import and bind
# Variables that would change how the child behaves if inherited from the developer's shell.
_SCRUBBED = frozenset(
    {spec.name for spec in SETTINGS}
    | {"CONFIG_FILE", "ENV_FILE", "JOURNAL_STREAM", "PROMETHEUS_MULTIPROC_DIR"}
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, stderr_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = stderr_path

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_until_serving(server: ServerProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll ``GET /`` until it answers, failing early (with the child's stderr) if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode}:\n"
                + "\n".join(server.stderr_lines())
            )
        try:
            with urllib.request.urlopen(server.url + "/", timeout=5):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def server_env(upload_folder: Path, port: int, **settings: str) -> dict[str, str]:
    """The inherited environment minus anything that configures the server, plus settings."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    empty_env = upload_folder.parent / "server-test.env"
    empty_env.touch()
    env |= {
        "ENV_FILE": str(empty_env),  # not the developer's .env
        "UPLOAD_FOLDER": str(upload_folder),
        "PORT": str(port),
        "FSYNC": "false",
        # The repository's clustr_aio, even where it is not installed into the interpreter.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return env | settings


@contextmanager
def running_server(
    tmp_path: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    upload_folder: Path | None = None,
    journal: bool = False,
) -> Iterator[ServerProcess]:
    """Start the server, wait until it answers, stop it (SIGTERM) afterwards.

    stderr goes to a file; with ``journal=True`` the child gets ``JOURNAL_STREAM`` naming that
    file's device and inode, exactly as systemd names the journal socket it connects stderr to.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    folder = upload_folder or tmp_path / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(folder, port, **dict(extra_env or {}))
    stderr_path = tmp_path / f"server-{port}.stderr"
    with stderr_path.open("wb") as stderr:
        if journal:
            stat = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        process = subprocess.Popen(
            [sys.executable, "-m", "clustr_aio"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = ServerProcess(process, port, stderr_path)
    try:
        wait_until_serving(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
