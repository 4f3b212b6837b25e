"""The systemd side: sd_notify and socket activation in clustr_aio/systemd.py, and the unit
files in deploy/, checked by ``systemd-analyze verify`` and against the settings."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustr_aio.runtime import systemd
from clustr_aio.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
INSTALLED_EXEC = "/opt/clustr-aio/.venv/bin/clustr-aio"


# --------------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "n.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        path = Path(f"/tmp/clustr-notify-test-{os.getpid()}.sock")
        path.unlink(missing_ok=True)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()
    path.unlink(missing_ok=True)


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert systemd.notify("READY=1\nSTATUS=up", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_to_an_abstract_socket() -> None:
    name = f"clustr-aio-unit-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("address", ["", "relative/path", "vsock:2:1234"])
def test_notify_without_a_usable_socket_does_nothing(address: str) -> None:
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": address}) is False
    assert systemd.notify("READY=1", environ={}) is False


def test_notify_to_a_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    environ = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    assert systemd.notify("READY=1", environ=environ) is False


def test_systemd_notifier_messages(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = systemd.SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.ready("serving on x")
    assert sock.recv(4096).decode().splitlines() == [
        "READY=1",
        "STATUS=serving on x",
        f"MAINPID={os.getpid()}",
    ]
    notifier.status("busy")
    assert sock.recv(4096) == b"STATUS=busy"
    notifier.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    assert notifier.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    assert systemd.SystemdNotifier(environ).watchdog_interval == interval


def test_listen_fds_for_another_process_are_ignored_and_forgotten() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "PATH": "/bin"}
    assert systemd.listen_fds(environ) == []
    assert environ == {"PATH": "/bin"}  # a child process must not take them for its own


def test_no_listen_fds_without_socket_activation() -> None:
    assert systemd.listen_fds({}) == []


# --------------------------------------------------------------------------- unit files


def unit_values(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value assigned to it, in order (keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_service_unit_matches_the_server() -> None:
    service = unit_values(DEPLOY / "clustr-aio.service")
    assert service["Service.Type"] == ["notify"]
    assert service["Service.ExecStart"] == [INSTALLED_EXEC]
    # The console script it runs is the one the package installs.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(INSTALLED_EXEC).name in scripts
    # The only writable path is the upload folder the service is configured with.
    upload_folder = next(
        env.split("=", 1)[1]
        for env in service["Service.Environment"]
        if env.startswith("UPLOAD_FOLDER=")
    )
    assert service["Service.ReadWritePaths"] == [upload_folder]
    assert service["Service.ProtectSystem"] == ["strict"]
    assert service["Service.CapabilityBoundingSet"] == [""]
    assert service["Service.RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in service["Service.SystemCallFilter"]
    assert service["Service.Restart"] == ["on-failure"]
    # A stop must outlast the drain: SHUTDOWN_TIMEOUT, then a few seconds to abort and close.
    stop_timeout = seconds(service["Service.TimeoutStopSec"][0])
    assert stop_timeout >= Settings().shutdown_timeout + 10
    assert seconds(service["Service.WatchdogSec"][0]) > 0
    assert service["Service.KillMode"] == ["mixed"]  # SIGTERM to the supervisor only


def test_socket_unit_listens_where_the_server_would() -> None:
    socket_unit = unit_values(DEPLOY / "clustr-aio.socket")
    defaults = Settings()
    assert socket_unit["Socket.ListenStream"] == [f"{defaults.host}:{defaults.port}"]
    assert socket_unit["Socket.Accept"] == ["no"]  # one server takes the listening socket


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units, with ExecStart pointing at this checkout's console script (verify insists
    that it exists and is executable)."""
    executable = shutil.which("clustr-aio", path=str(REPO / ".venv" / "bin")) or shutil.which(
        "clustr-aio"
    )
    assert executable, "the clustr-aio console script is not installed (make install)"
    directory = tmp_path / "units"
    directory.mkdir()
    for name in ("clustr-aio.service", "clustr-aio.socket"):
        text = (DEPLOY / name).read_text().replace(INSTALLED_EXEC, executable)
        (directory / name).write_text(text)
    return directory


def verify(directory: Path) -> tuple[int, str]:
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze is missing: run .ci/system-deps"
    result = subprocess.run(
        [systemd_analyze, "verify", "clustr-aio.service", "clustr-aio.socket"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Only what concerns these units: verify may also comment on the host's own units.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "clustr-aio" in line or str(directory) in line
    ]
    return result.returncode, "\n".join(ours)


def test_systemd_analyze_verify_accepts_the_units(units: Path) -> None:
    assert verify(units) == (0, "")


@pytest.mark.parametrize(
    ("line", "broken", "complaint"),
    [
        ("Type=notify", "Type=notfy", "Failed to parse service type"),
        ("ProtectSystem=strict", "ProtectSystem=strictest", "Failed to parse protect system"),
        ("WatchdogSec=30s", "WatchdogSec=thirty", "Failed to parse sec value"),
        ("[Service]", "[Servic]", "Unknown section 'Servic'"),
    ],
)
def test_systemd_analyze_verify_rejects_a_broken_unit(
    units: Path, line: str, broken: str, complaint: str
) -> None:
    service = units / "clustr-aio.service"
    text = service.read_text()
    assert text.count(f"\n{line}\n") == 1
    service.write_text(text.replace(f"\n{line}\n", f"\n{broken}\n"))
    # verify only warns (status 0) about most bad values: its output is what tells.
    _, output = verify(units)
    assert complaint in output


def test_systemd_analyze_verify_fails_without_the_executable(units: Path) -> None:
    service = units / "clustr-aio.service"
    text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/nonexistent/clustr-aio", service.read_text())
    service.write_text(text)
    status, output = verify(units)
    assert status != 0
    assert "/nonexistent/clustr-aio is not executable" in output
