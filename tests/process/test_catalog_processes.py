"""The catalog with real server processes: a kill -9 between publishing a batch and committing
its records, and several workers sharing one catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import textwrap
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JPEG, REPO, stored_files
from tests.http.helpers import files_body, multipart_headers
from tests.process.conftest import StartServer
from tests.server_process import WAIT_SECONDS, wait_until

# Imported at the start of the server process (a sitecustomize on its PYTHONPATH): once the
# batch is published, the catalog commit marks the names and waits for the kill.
_PAUSE_BEFORE_COMMIT = """
import asyncio, os
from clustr_aio.catalog import postgres, sqlite

def pause(real):
    async def add(self, records):
        with open(os.environ["CLUSTR_TEST_PAUSED"], "w") as marker:
            marker.write(" ".join(r.stored_name for r in records))
        await asyncio.sleep(3600)
        return await real(self, records)
    return add

for backend in (sqlite.SqliteCatalog, postgres.PostgresCatalog):
    backend.add = pause(backend.add)
"""


def post(url: str, *files: tuple[str, bytes], timeout: float = WAIT_SECONDS) -> Any:
    request = urllib.request.Request(
        url + "/api/upload", data=files_body(*files), headers=multipart_headers(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=WAIT_SECONDS) as response:
        return json.load(response)


def env_for(database_url: str | None, **more: str) -> dict[str, str]:
    return {**({"DATABASE_URL": database_url} if database_url else {}), **more}


def test_kill_between_publish_and_commit_then_the_next_start_adopts_the_files(
    server_factory: StartServer, tmp_path: Path, database_url: str | None
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(_PAUSE_BEFORE_COMMIT))
    marker = tmp_path / "paused"
    server = server_factory(
        env_for(
            database_url,
            PYTHONPATH=f"{hook}:{REPO}",
            CLUSTR_TEST_PAUSED=str(marker),
        )
    )
    data = JPEG + b"killed mid-commit"

    def upload_until_killed() -> None:
        with pytest.raises(
            (ConnectionError, urllib.error.URLError)
        ):  # the connection dies with the server: no answer
            post(server.url, ("a.jpg", data), ("b.jpg", JPEG))

    uploading = threading.Thread(target=upload_until_killed, daemon=True)
    uploading.start()
    # Written, not just created: the server opens the marker, then writes the names.
    wait_until(
        lambda: marker.exists() and bool(marker.read_text()),
        "the batch published and its commit begun",
    )
    assert marker.read_text().split() == ["a.jpg", "b.jpg"]
    assert stored_files(server.upload_folder) == ["a.jpg", "b.jpg"]  # linked, not recorded
    server.kill()
    uploading.join(WAIT_SECONDS)

    restarted = server_factory(env_for(database_url, UPLOAD_FOLDER=str(server.upload_folder)))
    restarted.wait_for_log(r"2 files without a record adopted, 0 records without a file removed")
    # Dated by their modification time, maybe the same millisecond: in either order.
    listed = {i["stored_filename"]: i for i in get(f"{restarted.url}/api/files")["data"]}
    assert sorted(listed) == ["a.jpg", "b.jpg"]
    assert listed["a.jpg"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert listed["a.jpg"]["content_type"] == "image/jpeg"
    assert listed["a.jpg"]["file_size"] == len(data)
    assert listed["a.jpg"]["original_filename"] == "a.jpg"


def test_two_workers_uploading_the_same_names_at_once_share_one_catalog(
    server_factory: StartServer, database_url: str | None
) -> None:
    server = server_factory(env_for(database_url), workers=2)
    rounds = 24

    def upload_round(n: int) -> list[dict[str, Any]]:
        files = [("a.jpg", JPEG + bytes([n])), ("b.jpg", JPEG + bytes([n, 1]))]
        items: list[dict[str, Any]] = post(server.url, *files)["data"]
        return items

    with ThreadPoolExecutor(8) as pool:
        items = [item for batch in pool.map(upload_round, range(rounds)) for item in batch]
    names = [item["stored_filename"] for item in items]
    assert len(set(names)) == len(names) == 2 * rounds  # every file its own name
    assert len({item["id"] for item in items}) == len(items)
    listed = get(f"{server.url}/api/files?limit=1000")["data"]
    assert sorted(i["id"] for i in listed) == sorted(i["id"] for i in items)
    assert sorted(stored_files(server.upload_folder)) == sorted(names)
    assert len(set(server.worker_pids())) == 2
