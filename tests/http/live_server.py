"""A real server whose configured address is the one it listens on, so the OpenAPI document's
server URL (and every ``preview_url``) points at it, as in production."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from clustr_aio.web.app import create_app
from tests.conftest import make_settings
from tests.server_process import free_port

AiohttpServer = Callable[..., Awaitable[TestServer]]


async def start_live_server(
    aiohttp_server: AiohttpServer, upload_dir: Path, **overrides: Any
) -> TestServer:
    last_error: OSError | None = None
    for _attempt in range(5):  # another process may take the free port before we bind it
        port = free_port()
        settings = make_settings(upload_dir, host="127.0.0.1", port=port, **overrides)
        try:
            return await aiohttp_server(create_app(settings), host="127.0.0.1", port=port)
        except OSError as error:
            last_error = error
    raise AssertionError(f"no free port to listen on: {last_error}")
