"""The catalog with real server processes: a kill -9 between publishing a batch and committing
its records (rolled back at the next start), and several workers sharing one catalog (SQLite
and PostgreSQL)."""

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


def test_kill_between_publish_and_commit_then_the_next_start_rolls_the_batch_back(
    server_factory: StartServer, tmp_path: Path, database_url: str | None
) -> None:
    """Never answered, so nothing of it stays: the start-up sweep unpublishes the batch (it
    was not sealed) before the reconciliation could adopt its files; a file an operator
    copied in meanwhile (no temporary file links it) is still adopted."""
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
    planted = JPEG + b"an operator's copy"
    (server.upload_folder / "planted.jpg").write_bytes(planted)

    restarted = server_factory(env_for(database_url, UPLOAD_FOLDER=str(server.upload_folder)))
    restarted.wait_for_log(r"1 files without a record adopted, 0 records without a file removed")
    assert "rolled back 1 publish(es) that ended with process" in restarted.logs
    assert stored_files(server.upload_folder) == ["planted.jpg"]
    [item] = get(f"{restarted.url}/api/files")["data"]
    assert item["stored_filename"] == "planted.jpg"
    assert item["sha256"] == hashlib.sha256(planted).hexdigest()
    assert item["content_type"] == "image/jpeg"
    assert item["original_filename"] == "planted.jpg"


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


# Every upload's check for stored bytes waits a moment after it looked: uploads of the same
# new bytes that start together all find them not stored yet, as they could by chance.
_SLOW_CHECK = """
import asyncio
from clustr_aio.catalog import postgres, sqlite

def slow(real):
    async def by_sha256(self, digests, **options):
        found = await real(self, digests, **options)
        await asyncio.sleep(0.5)
        return found
    return by_sha256

for backend in (sqlite.SqliteCatalog, postgres.PostgresCatalog):
    backend.by_sha256 = slow(backend.by_sha256)
"""


@pytest.mark.parametrize("dedupe", ["reuse", "reject"])
def test_uploads_of_the_same_new_bytes_at_once_store_them_once(
    server_factory: StartServer, tmp_path: Path, database_url: str | None, dedupe: str
) -> None:
    """Issue 11's DEDUPE across workers: 6 uploads of the same new bytes at once (both workers
    get some). Before, every one stored its copy; now one does, and the others are answered
    with it (reuse) or refused (reject)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(_SLOW_CHECK))
    env = env_for(database_url, DEDUPE=dedupe, PYTHONPATH=f"{hook}:{REPO}")
    server = server_factory(env, workers=2)
    data = JPEG + b"new bytes, six times at once"

    def upload(n: int) -> tuple[int, Any]:
        try:
            return 200, post(server.url, ("same.jpg", data), ("own.jpg", JPEG + bytes([n])))
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(upload, range(6)))
    listed = get(f"{server.url}/api/files?limit=1000")["data"]
    digest = hashlib.sha256(data).hexdigest()
    assert [i["sha256"] for i in listed].count(digest) == 1
    stored = next(i for i in listed if i["sha256"] == digest)
    assert sorted(stored_files(server.upload_folder)) == sorted(
        i["stored_filename"] for i in listed
    )
    if dedupe == "reuse":
        assert [status for status, _ in answers] == [200] * 6
        items = [body["data"][0] for _, body in answers]
        assert sorted(i["duplicate"] for i in items) == [False] + [True] * 5
        assert {i["id"] for i in items} == {stored["id"]}
        assert len(listed) == 7  # and every upload's own file
    else:
        assert sorted(status for status, _ in answers) == [200] + [409] * 5
        refused = [body for status, body in answers if status == 409]
        assert all(b["file"] == "same.jpg" and b["index"] == 0 for b in refused), refused
        assert len(listed) == 2  # all or nothing: the refused uploads' own files are gone too
