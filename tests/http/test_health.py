"""``/healthz`` and ``/readyz`` on a real server: ready only while uploads can succeed."""

from __future__ import annotations

import shutil
from pathlib import Path

from clustr_aio.settings import parse_size
from clustr_aio.web.app import create_app
from tests.conftest import JPEG, AiohttpClient, make_settings
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, upload
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
