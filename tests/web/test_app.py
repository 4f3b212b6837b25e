"""The application factory's choices that depend on the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clustr_aio.web.app import create_app, render_threads
from clustr_aio.web.keys import THUMBNAILER
from tests.conftest import AiohttpClient, make_settings


@pytest.mark.parametrize(
    ("cores", "workers", "threads"), [(2, 1, 2), (2, 2, 1), (1, 1, 1), (16, 4, 2), (2, 8, 1)]
)
def test_render_threads_share_the_cores_among_the_workers(
    cores: int, workers: int, threads: int
) -> None:
    assert render_threads(cores, workers) == threads


async def test_a_worker_of_several_renders_with_its_share(
    aiohttp_client: AiohttpClient, upload_dir: Path
) -> None:
    client = await aiohttp_client(create_app(make_settings(upload_dir, workers=2)))
    assert client.app[THUMBNAILER].workers == render_threads(os.cpu_count() or 1, 2)
