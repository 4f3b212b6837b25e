"""``/healthz`` and ``/readyz`` on a real server: ready only while uploads can succeed."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from clustr_aio.settings import parse_size
from clustr_aio.web.app import create_app
from tests.conftest import JPEG, AiohttpClient, make_settings, stored_files
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, upload
from tests.postgres import postgres_cluster
from tests.small_filesystem import cover_read_only, tmpfs

LARGER_THAN_ANY_DISK = parse_size("1024TiB")


async def test_healthz_answers_while_the_process_lives(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_a_writable_folder_and_room(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}


async def test_readyz_is_503_below_min_free_space(make_client: MakeClient) -> None:
    client = await make_client(min_free_space=LARGER_THAN_ANY_DISK)
    detail = await expect_error(await client.get("/readyz"), 503)
    assert "MIN_FREE_SPACE" in detail
    # Still alive: a supervisor must not restart a server because the disk is full.
    assert (await client.get("/healthz")).status == 200
    # And uploads are refused the same way, before anything is written.
    await expect_error(await upload(client, ("a.jpg", JPEG)), 507)


async def test_readyz_is_503_when_the_upload_folder_is_gone(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client()
    shutil.rmtree(upload_dir)
    detail = await expect_error(await client.get("/readyz"), 503)
    assert "not writable" in detail
    assert "No such file or directory" in detail


async def test_uploads_and_readyz_recover_when_incoming_is_removed(
    make_client: MakeClient, upload_dir: Path
) -> None:
    """An operator cleaning up the temporary files under a running server (``rm -r .incoming``)
    does not break uploads until a restart: the next one makes the directory again."""
    client = await make_client()
    [first] = (await (await upload(client, ("a.jpg", JPEG))).json())["data"]
    shutil.rmtree(upload_dir / ".incoming")
    assert (await client.delete(f"/api/files/{first['id']}")).status == 204
    shutil.rmtree(upload_dir / ".incoming")
    response = await upload(client, ("b.jpg", JPEG), ("c.jpg", JPEG + bytes(3 << 20)))
    assert response.status == 200, await response.text()
    assert (await client.get("/readyz")).status == 200
    assert stored_files(upload_dir) == ["b.jpg", "c.jpg"]


async def test_readyz_is_503_on_a_read_only_filesystem(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "ro", "1m") as folder:
        client = await aiohttp_client(create_app(make_settings(folder, min_free_space=0)))
        assert (await client.get("/readyz")).status == 200
        cover_read_only(folder)
        detail = await expect_error(await client.get("/readyz"), 503)
        assert "Read-only file system" in detail
        await client.close()


async def test_readyz_is_503_while_the_catalogs_postgresql_is_down_and_recovers(
    make_client: MakeClient, upload_dir: Path
) -> None:
    """A private cluster, stopped and started again under a live server: the uploads' commit
    would fail meanwhile, so a load balancer must send them elsewhere."""
    with postgres_cluster() as cluster:
        client = await make_client(database_url=await cluster.server.new_database())
        assert (await client.get("/readyz")).status == 200
        cluster.stop("fast")
        started = time.monotonic()
        response = await client.get("/readyz")
        detail = await expect_error(response, 503)
        assert time.monotonic() - started < 5
        assert detail.startswith("not ready: the catalog's database cannot be reached"), detail
        assert (await client.get("/healthz")).status == 200  # alive: nothing to restart
        refused = await upload(client, ("a.jpg", JPEG))  # its commit fails: busy, not broken
        assert "cannot be reached" in await expect_error(refused, 503)
        assert refused.headers["Retry-After"] == "1"
        assert stored_files(upload_dir) == []
        cluster.start()
        deadline = time.monotonic() + 30
        while (response := await client.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, await response.text()
            await asyncio.sleep(0.2)
        assert await response.json() == {"status": "ready"}
        assert (await upload(client, ("a.jpg", JPEG))).status == 200
