"""Start ``python -m clustr_aio`` as a real process, the way systemd does: the one way the tests
start the whole program (its logging, its environment handling, signals, ``kill -9``, workers,
socket activation, sd_notify).

``start_server(env, workers=N, directory=tmp_path)`` hands the child a ``NOTIFY_SOCKET`` of its
own and returns once the server has sent ``READY=1`` on it (the readiness systemd would see, and
with workers only once every one serves), so no test polls a port. Always stop what you start:
``with start_server(...) as server:``, or the ``server_factory`` fixture in
``tests/process/conftest.py``; either kills whatever is left of it at the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from clustr_aio.settings import SETTINGS

__all__ = [
    "WAIT_SECONDS",
    "NotifySocket",
    "RunningServer",
    "clean_env",
    "free_port",
    "server_env",
    "spawn_logged",
    "start_server",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 30.0
"""Upper bound for anything these tests wait for; generous for a loaded 2-core CI machine."""

# Variables that would change how the child behaves if inherited from the developer's shell.
_SCRUBBED = frozenset(
    {spec.name for spec in SETTINGS}
    | {"CONFIG_FILE", "ENV_FILE", "JOURNAL_STREAM", "PROMETHEUS_MULTIPROC_DIR"}
    # systemd's, when the tests themselves run under it: the child gets its own or none.
    | {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    | {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


def wait_until(
    condition: Callable[[], bool], what: str | Callable[[], str], *, timeout: float = WAIT_SECONDS
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds.

    ``what`` may be a function, to describe the state at the failure (a log, say), not at the
    start of the wait.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {description}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port nobody listens on right now (another process may take it before you bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The inherited environment minus anything that configures the server."""
    return {k: v for k, v in os.environ.items() if k not in _SCRUBBED}


def server_env(upload_folder: Path, port: int, **settings: str) -> dict[str, str]:
    """:func:`clean_env` plus settings: for running the program directly, where
    :func:`start_server` does not fit."""
    env = clean_env()
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
    """A started server. ``port``/``url`` to reach it, ``upload_folder`` to look at the disk,
    ``logs`` for what it wrote to stdout and stderr (still there after it stopped)."""

    process: subprocess.Popen[bytes]
    port: int
    upload_folder: Path
    log_path: Path
    notify: NotifySocket
    temp_dir: Path
    _closed: bool = field(default=False, repr=False)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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

        wait_until(logged, lambda: f"{pattern!r} in the log:\n{self.logs}", timeout=timeout)
        return found[0]

    def wait_for_worker_serving(self, pid: int) -> None:
        """Until the supervisor has logged that worker ``pid`` serves (it wrote ``R``)."""
        self.wait_for_log(rf"worker \d+ \(pid {pid}\) serving")

    def worker_pids(self) -> list[int]:
        """The server's live child processes (its workers), from /proc."""
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
    directory: Path,
    workers: int = 1,
    listen_socket: socket.socket | None = None,
    abstract_notify_socket: bool = False,
    journal: bool = False,
    wait_ready: bool = True,
    ready_timeout: float = WAIT_SECONDS,
    max_open_files: int | None = None,
) -> RunningServer:
    """Start ``python -m clustr_aio`` with settings ``env`` and wait for ``READY=1``.

    ``directory`` (created if need be) is the server's working directory and holds its log and
    (unless ``env`` names another ``UPLOAD_FOLDER``) the ``uploads`` folder.
    ``listen_socket``: serve on this listening socket, passed as systemd's socket activation
    does (``LISTEN_FDS=1``, ``LISTEN_PID``, descriptor 3), instead of binding a free port.
    ``journal``: the child gets ``JOURNAL_STREAM`` naming its log file's device and inode,
    exactly as systemd names the journal socket it connects stdout and stderr to.
    ``wait_ready=False``: return at once, ready or not (to watch a failing start).
    ``max_open_files``: the child's RLIMIT_NOFILE (soft and hard), as ``prlimit`` would set it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"WORKERS": str(workers), **(env or {})}
    upload_folder = Path(settings.get("UPLOAD_FOLDER", directory / "uploads"))
    if not upload_folder.exists():
        upload_folder.mkdir(parents=True)
    # The server's TMPDIR, as systemd's PrivateTmp gives it one: what a server killed at
    # teardown leaves there (its metrics directory) goes with the test's tmp_path.
    temp_dir = directory / "tmp"
    temp_dir.mkdir(exist_ok=True)
    for _ in range(3):  # another process may take the free port before the server binds it
        port = listen_socket.getsockname()[1] if listen_socket else free_port()
        notify = NotifySocket(abstract=abstract_notify_socket)
        log_path = directory / f"server-{port}-{time.monotonic_ns()}.log"
        child_env = server_env(upload_folder, port) | {
            "NOTIFY_SOCKET": notify.address,
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(temp_dir),
            **settings,
        }
        process = _spawn(
            child_env, directory, log_path, listen_socket, journal=journal, nofile=max_open_files
        )
        server = RunningServer(process, port, upload_folder, log_path, notify, temp_dir)
        if not wait_ready or _became_ready(server, ready_timeout, may_retry=not listen_socket):
            return server
    raise AssertionError(f"no free port found:\n{server.logs}")


def _became_ready(server: RunningServer, timeout: float, *, may_retry: bool) -> bool:
    """Whether ``server`` sent ``READY=1``; ``False`` if it lost its port to another process and
    ``may_retry`` on another one. Fails (and closes it) if it exited for any other reason."""
    try:
        wait_until(server.ready_or_exited, "READY=1", timeout=timeout)
    except BaseException:
        server.close()
        raise
    if server.process.poll() is None:
        return True
    server.close()
    if may_retry and "Address already in use" in server.logs:
        return False
    raise AssertionError(f"server exited with {server.process.returncode}:\n{server.logs}")


def _spawn(
    env: dict[str, str],
    directory: Path,
    log_path: Path,
    listen_socket: socket.socket | None,
    *,
    journal: bool,
    nofile: int | None = None,
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
    return spawn_logged(
        command,
        env=env,
        cwd=directory,
        log_path=log_path,
        pass_fds=pass_fds,
        journal=journal,
        nofile=nofile,
    )


def spawn_logged(
    command: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    pass_fds: Sequence[int] = (),
    journal: bool = False,
    nofile: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` the way servers are started here: stdin closed, stdout and stderr into
    ``log_path``, in a session of its own (``journal``: see :func:`start_server`; ``nofile``:
    its RLIMIT_NOFILE, soft and hard)."""
    with log_path.open("wb") as log:
        if journal:
            stat = os.fstat(log.fileno())
            env = {**env, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,  # its own process group, so that close() reaches workers
            preexec_fn=None if nofile is None else functools.partial(_limit_files, nofile),
        )


def _limit_files(nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
