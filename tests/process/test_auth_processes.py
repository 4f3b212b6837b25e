"""API keys and rate limits across real processes: a key made by the real CLI in a subprocess
works at once in every worker of a running server, and once revoked (by the CLI, or over HTTP
in one worker) is refused by each of them from its next request on, though each had just
admitted it (and kept it); a rate limit holds for two workers together, not per worker;
PUBLIC_FILES=false without SECRET_KEY stops start-up with one line."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.postgres import PostgresServer
from tests.process.conftest import StartServer
from tests.server_process import WAIT_SECONDS, RunningServer, server_env, wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's (and the CLI's) catalog: the SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return {"DATABASE_URL": asyncio.run(server.new_database())}


def keys_cli(
    server: RunningServer, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m clustr_aio keys …`` with the server's own settings (its catalog)."""
    env = server_env(server.upload_folder, server.port) | {"AUTH": "keys", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "clustr_aio", "keys", *arguments],
        env=env,
        cwd=server.upload_folder.parent,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )


def status_of(
    url: str, key: str | None = None, *, method: str = "GET", request_id: str | None = None
) -> int:
    headers = {"X-API-Key": key} if key else {}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def many(url: str, count: int, key: str | None = None) -> list[int]:
    """``count`` GETs, eight at a time, each on a connection of its own (so both workers
    accept some)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: status_of(url, key), range(count)))


def answered(server: RunningServer, url: str, key: str, method: str = "GET") -> tuple[int, int]:
    """A request's status, and the pid of the worker that answered it (from its access line,
    found by the request's id)."""
    request_id = uuid.uuid4().hex
    status = status_of(url, key, method=method, request_id=request_id)
    line = server.wait_for_log(rf"\[pid (\d+)\] clustr_aio\.access: .* id={request_id}\b")
    return status, int(line[1])


def until_each_answered(
    server: RunningServer, url: str, key: str, workers: set[int]
) -> list[tuple[int, int]]:
    """Requests eight at a time, each on a connection of its own, until each of ``workers``
    answered one: every (status, pid), in the order sent."""
    seen: list[tuple[int, int]] = []

    def each_answered() -> bool:
        with ThreadPoolExecutor(8) as pool:
            seen.extend(pool.map(lambda _: answered(server, url, key), range(8)))
        return {pid for _, pid in seen} >= workers

    wait_until(each_answered, lambda: f"each of {workers} answering: {seen}")
    return seen


def refusing_pids(server: RunningServer, reason: str) -> set[int]:
    return {
        int(pid)
        for pid in re.findall(rf"\[pid (\d+)\] clustr_aio.auth: refused \({reason}", server.logs)
    }


def test_a_key_from_the_cli_works_at_once_and_its_revocation_reaches_every_worker(
    server_factory: StartServer, catalog_env: dict[str, str]
) -> None:
    server = server_factory({"AUTH": "keys", **catalog_env}, workers=2)
    workers = set(server.worker_pids())
    files = server.url + "/api/files"
    made = keys_cli(
        server, "create", "phone", "--scopes", "upload,read", "--expires", "1d", env=catalog_env
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"clustr_[A-Za-z0-9_-]{43}", key)
    assert "shown once" in made.stderr
    admitted = until_each_answered(server, files, key, workers)  # each keeps it now
    assert {status for status, _ in admitted} == {200}
    listed = keys_cli(server, "list", env=catalog_env)
    assert listed.returncode == 0
    assert "phone" in listed.stdout
    assert key not in listed.stdout
    assert "upload,read" in listed.stdout

    revoked = keys_cli(server, "revoke", "phone", env=catalog_env)
    assert revoked.returncode == 0, revoked.stderr
    refused = until_each_answered(server, files, key, workers)
    assert {status for status, _ in refused} == {401}  # from the first request on, in each
    assert refusing_pids(server, "unauthorized") == workers
    assert keys_cli(server, "revoke", "phone", env=catalog_env).returncode == 1
    assert key not in server.logs


def test_a_key_revoked_over_http_in_one_worker_is_refused_by_the_other_at_once(
    server_factory: StartServer, catalog_env: dict[str, str]
) -> None:
    server = server_factory({"AUTH": "keys", **catalog_env}, workers=2)
    workers = set(server.worker_pids())
    files = server.url + "/api/files"
    made = [
        keys_cli(server, "create", name, "--scopes", scopes, env=catalog_env)
        for name, scopes in (("phone", "read"), ("root", "admin"))
    ]
    assert [m.returncode for m in made] == [0, 0], [m.stderr for m in made]
    phone, root = (m.stdout.strip() for m in made)
    admitted = until_each_answered(server, files, phone, workers)
    assert {status for status, _ in admitted} == {200}

    status, revoker = answered(server, server.url + "/api/keys/phone", root, method="DELETE")
    assert status == 204
    (other,) = workers - {revoker}
    refused: list[tuple[int, int]] = []

    def the_other_answered() -> bool:
        refused.append(answered(server, files, phone))
        return refused[-1][1] == other

    wait_until(the_other_answered, lambda: f"worker {other} answering: {refused}")
    assert {status for status, _ in refused} == {401}, refused
    assert refused[-1] == (401, other)  # the other worker's first answer since: refused
    assert {status for status, _ in until_each_answered(server, files, root, workers)} == {200}


def test_a_rate_limit_holds_for_the_workers_together(server_factory: StartServer) -> None:
    server = server_factory({"RATE_LIMIT_REQUESTS": "20/min"}, workers=2)
    workers = set(server.worker_pids())
    statuses = many(server.url + "/api/files", 60)
    # 20 in the bucket, and at most a token or two refilled while the test runs.
    assert 20 <= statuses.count(200) <= 22, statuses
    assert statuses.count(429) == 60 - statuses.count(200)

    def both_limiting() -> bool:
        many(server.url + "/api/files", 8)
        return refusing_pids(server, "rate_limited") == workers

    wait_until(both_limiting, "both workers refusing")


def test_private_files_without_a_secret_stop_start_up_with_one_line(
    server_factory: StartServer, tmp_path: Path
) -> None:
    server = server_factory({"PUBLIC_FILES": "false"}, wait_ready=False)
    assert server.wait() == 2
    assert (
        server.logs.strip() == "clustr-aio: error: SECRET_KEY: required when PUBLIC_FILES is false"
    )
