"""Fixtures for the HTTP tests: servers with settings other than the defaults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clustr_aio.web.app import create_app
from tests.conftest import AiohttpClient, Client, make_settings

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, upload_dir: Path) -> MakeClient:
    """``await make_client(max_files=2)``: a real server on ``upload_dir`` with those settings."""

    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(make_settings(upload_dir, **overrides)))

    return make
