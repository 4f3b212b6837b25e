"""Start ``python -m clustr_aio`` as a real process, the way systemd does, for tests of the
process model: signals, ``kill -9``, workers, socket activation, sd_notify.

``start_server(env, workers=N)`` hands the child a ``NOTIFY_SOCKET`` of its own and returns once
the server has sent ``READY=1`` on it (the readiness systemd would see), so no test polls a port.
Always stop what you start: the ``server_factory`` fixture in ``tests/process/conftest.py`` does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.server_subprocess import free_port, server_env

__all__ = ["NotifySocket", "RunningServer", "launch_server", "start_server", "wait_until"]

WAIT_SECONDS = 30.0
"""Upper bound for anything these tests wait for; generous for a loaded 2-core CI machine."""


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = WAIT_SECONDS) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class NotifySocket:
    """A datagram socket standing in for systemd's: it collects what the server notifies."""

    def __init__(self, *, abstract: bool = False) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._directory: Path | None = None
        if abstract:
            name = f"clustr-aio-test-{os.getpid()}-{time.monotonic_ns()}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # Its own short directory: a socket path must fit in 108 bytes, and pytest's
            # tmp_path for a long test name may not.
            self._directory = Path(tempfile.mkdtemp(prefix="clustr-notify-"))
            self.address = str(self._directory / "notify.sock")
            self._sock.bind(self.address)
        self._sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        """Every datagram received so far, oldest first."""
        while True:
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def fields(self) -> list[tuple[str, str]]:
        """Every ``KEY=value`` line received so far, in order."""
        lines = (line for message in self.received() for line in message.splitlines())
        return [(key, value) for key, _, value in (line.partition("=") for line in lines)]

    def has(self, line: str) -> bool:
        return any(line in message.splitlines() for message in self.received())

    def close(self) -> None:
        self._sock.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


@dataclass
class RunningServer:
    """A started server. ``port``/``url`` to reach it, ``upload_folder`` to look at the disk."""

    process: subprocess.Popen[bytes]
    port: int
    upload_folder: Path
    log_path: Path
    notify: NotifySocket
    _closed: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, *, timeout: float = WAIT_SECONDS) -> re.Match[str]:
        """The first match of the regular expression ``pattern`` in the log, once it is there."""
        found: list[re.Match[str]] = []

        def logged() -> bool:
            match = re.search(pattern, self.logs)
            if match:
                found.append(match)
            return match is not None

        wait_until(logged, f"{pattern!r} in the log:\n{self.logs}", timeout=timeout)
        return found[0]

    def worker_pids(self) -> list[int]:
        """The server's child processes (its workers), from /proc."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process ended meanwhile
            if int(fields[1]) == self.pid and fields[0] != "Z":
                children.append(int(stat.parent.name))
        return sorted(children)

    def ready_or_exited(self) -> bool:
        return self.notify.has("READY=1") or self.process.poll() is not None

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = WAIT_SECONDS) -> int:
        """The exit status, once the server has exited by itself."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = WAIT_SECONDS) -> int:
        """SIGTERM, as ``systemctl stop`` sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the server and every process it started (its session)."""
        if not self._closed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # start_new_session: the group is ours
            self.process.wait(WAIT_SECONDS)

    def close(self) -> None:
        """Teardown: whatever state it is in, leave no process behind."""
        if not self._closed:
            self.kill()
            self._closed = True
            self.notify.close()


def start_server(
    env: Mapping[str, str] | None = None,
    *,
    workers: int = 1,
    directory: Path | None = None,
    listen_socket: socket.socket | None = None,
    abstract_notify_socket: bool = False,
    ready_timeout: float = WAIT_SECONDS,
) -> RunningServer:
    """Start ``python -m clustr_aio`` with settings ``env`` and wait for ``READY=1``.

    ``directory`` holds the log, the notify socket and (unless ``env`` names another
    ``UPLOAD_FOLDER``) the ``uploads`` folder; a new temporary one by default.
    ``listen_socket``: serve on this listening socket, passed as systemd's socket activation
    does (``LISTEN_FDS=1``, ``LISTEN_PID``, descriptor 3), instead of binding a free port.
    """
    for _ in range(3):  # another process may take the free port before the server binds it
        server = launch_server(
            env,
            workers=workers,
            directory=directory,
            listen_socket=listen_socket,
            abstract_notify_socket=abstract_notify_socket,
        )
        try:
            wait_until(server.ready_or_exited, "READY=1", timeout=ready_timeout)
        except BaseException:
            server.close()
            raise
        if server.process.poll() is None:
            return server
        server.close()
        if "Address already in use" not in server.logs or listen_socket:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.logs}")
    raise AssertionError(f"no free port found:\n{server.logs}")


def launch_server(
    env: Mapping[str, str] | None = None,
    *,
    workers: int = 1,
    directory: Path | None = None,
    listen_socket: socket.socket | None = None,
    abstract_notify_socket: bool = False,
) -> RunningServer:
    """Like :func:`start_server`, but return at once, ready or not (to watch a failing start)."""
    directory = directory or Path(tempfile.mkdtemp(prefix="clustr-aio-server-"))
    settings = dict(env or {})
    upload_folder = Path(settings.get("UPLOAD_FOLDER", directory / "uploads"))
    if not upload_folder.exists():
        upload_folder.mkdir(parents=True)
    port = listen_socket.getsockname()[1] if listen_socket else free_port()
    notify = NotifySocket(abstract=abstract_notify_socket)
    log_path = directory / f"server-{port}-{time.monotonic_ns()}.log"
    child_env = server_env(upload_folder, port) | {
        "WORKERS": str(workers),
        "NOTIFY_SOCKET": notify.address,
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    process = _spawn(child_env, directory, log_path, listen_socket)
    return RunningServer(process, port, upload_folder, log_path, notify)


def _spawn(
    env: dict[str, str],
    directory: Path,
    log_path: Path,
    listen_socket: socket.socket | None,
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "clustr_aio"]
    pass_fds: tuple[int, ...] = ()
    if listen_socket is not None:
        # LISTEN_PID must be the server's own pid: a small Python learns it and keeps it
        # (exec), moving the socket to descriptor 3 on the way, as systemd does.
        fd = listen_socket.fileno()
        wrapper = (
            "import os, sys\n"
            f"if {fd} != 3:\n    os.dup2({fd}, 3)\n    os.close({fd})\n"
            "os.environ |= {'LISTEN_PID': str(os.getpid()), 'LISTEN_FDS': '1'}\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'clustr_aio'])\n"
        )
        command = [sys.executable, "-c", wrapper]
        pass_fds = (fd,)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,  # its own process group, so that close() reaches workers
        )
