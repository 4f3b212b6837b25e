"""A real PostgreSQL for the tests: Debian's ``postgresql`` package (``.ci/system-deps``
installs it), a throwaway cluster started by the tests themselves in a temporary directory,
listening on a private Unix socket there (and a free port number, which names the socket), never
on the network. PostgreSQL refuses to run as root: as root, the cluster runs as the
``postgres`` user the package creates.

Without the package the PostgreSQL tests skip, saying so, unless ``CI`` is set: there a missing
PostgreSQL is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.server_process import free_port

__all__ = [
    "PostgresCluster",
    "PostgresServer",
    "find_bin_dir",
    "postgres_cluster",
    "postgres_server",
]


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass(frozen=True, slots=True)
class PostgresServer:
    socket_dir: Path
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    async def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        connection = await asyncpg.connect(self.url())
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)


def _run_as(user: str | None, command: list[str], **options: object) -> None:
    prefix = ["runuser", "-u", user, "--"] if user else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120, **options)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with postgres_cluster() as cluster:
        yield cluster.server


@dataclass(frozen=True, slots=True)
class PostgresCluster:
    """A started cluster that a test may also stop and start again (an outage)."""

    server: PostgresServer
    bin_dir: Path
    data: Path
    log: Path
    run_as: str | None

    def start(self) -> None:
        options = f"-k {self.server.socket_dir} -p {self.server.port} -c listen_addresses=''"
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _run_as(
            self.run_as,
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l",
             str(self.log), "start"],
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: a crash, which with synchronous_commit off loses the last commits;
        ``fast``: a clean shutdown, every client disconnected."""
        pg_ctl = str(self.bin_dir / "pg_ctl")
        _run_as(self.run_as, [pg_ctl, "-D", str(self.data), "-m", mode, "stop"])


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway cluster, started; removed on exit. Skips (or fails, under CI) without one."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (CI is set): run ./.ci/system-deps")
        pytest.skip(
            "PostgreSQL is not installed, so its tests are skipped: "
            "apt-get install postgresql (or ./.ci/system-deps)"
        )
    user = "postgres" if os.geteuid() == 0 else None
    owner = user or pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="clustr-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    cluster = PostgresCluster(
        PostgresServer(sockets, free_port(), owner), bin_dir, data, root / "log", user
    )
    try:
        _run_as(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", owner, "-A", "trust"])
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
