"""``server_factory``: start real server processes, and be sure none outlives its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import RunningServer, start_server

StartServer = Callable[..., RunningServer]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[StartServer]:
    """``server_factory(env, workers=N, ...)``: :func:`start_server` in this test's tmp_path;
    every server is killed at teardown."""
    started: list[RunningServer] = []

    def start(env: dict[str, str] | None = None, **options: Any) -> RunningServer:
        options.setdefault("directory", tmp_path)
        server = start_server(env, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """``EVENT_LOOP`` for each loop in turn, for the tests of what touches transports and
    listening sockets (drain, descriptor limits, send timeouts)."""
    return {"EVENT_LOOP": str(request.param)}
