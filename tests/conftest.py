"""Fixtures shared by the whole suite: settings isolated from the developer's environment,
a real aiohttp server on a real socket, and a look at what is on disk."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from clustr_aio.runtime.server import make_runner
from clustr_aio.settings import Settings, load_settings
from clustr_aio.storage.local import INCOMING_DIR
from clustr_aio.web.app import create_app
from clustr_aio.web.keys import QUICK_RESPONDER
from clustr_aio.web.quick import QuickResponders
from tests.postgres import PostgresServer, postgres_server
from tests.seaweedfs import seaweedfs_server

__all__ = ["postgres_server", "seaweedfs_server"]  # fixtures for the whole suite

REPO = Path(__file__).resolve().parent.parent

AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]

DEFAULT_LOOP: Mapping[str, LoopFactory] = {"uvloop": uvloop.new_event_loop}
"""What ``EVENT_LOOP=auto`` runs a server on, uvloop being installed: every async test's loop."""
BOTH_LOOPS: Mapping[str, LoopFactory] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
"""For tests marked ``both_loops`` (those of code that touches transports and sockets)."""


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return BOTH_LOOPS if item.get_closest_marker("both_loops") else DEFAULT_LOOP


def encoded(fmt: str, size: tuple[int, int] = (32, 24), **options: Any) -> bytes:
    """A real image in ``fmt`` (a Pillow format name), a colour gradient of ``size`` pixels."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


# Small, valid images: the upload path checks their structure. Bytes appended to one (JPEG +
# bytes(n)) come after its end and are stored as they are (STRIP_METADATA=location).
JPEG = encoded("JPEG")
PNG = encoded("PNG")
WEBP = encoded("WEBP")


def make_settings(upload_folder: Path, **overrides: Any) -> Settings:
    """The repository's config.toml defaults, nothing from the developer's .env or environment."""
    empty_env = upload_folder.parent / "empty.env"
    empty_env.touch()
    return load_settings(
        environ={},
        config_file=REPO / "config.toml",
        env_file=empty_env,
        upload_folder=upload_folder,
        **overrides,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each catalog backend in turn: None (the embedded SQLite file), then a fresh database
    on the tests' own PostgreSQL (tests/postgres.py), skipped only where it is not installed."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await server.new_database()


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(upload_dir: Path) -> Settings:
    return make_settings(upload_dir)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings))


class ProductionServer(TestServer):
    """A test server that serves the app through :func:`clustr_aio.runtime.server.make_runner`
    (its protocol options, timeouts and limits), as ``python -m clustr_aio`` does."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app, host="127.0.0.1")
        self.settings = settings

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return make_runner(self.settings, self.app)


async def serve_production(
    aiohttp_client: AiohttpClient, upload_dir: Path, **overrides: Any
) -> Client:
    """A client of ``create_app`` with these settings, served by :class:`ProductionServer`."""
    settings = make_settings(upload_dir, **overrides)
    return await aiohttp_client(ProductionServer(create_app(settings), settings))


_R = TypeVar("_R")


def quick_responder(app: web.Application, kind: type[_R]) -> _R:
    """The app's quick responder of that class (hot thumbnails, hot stored files)."""
    quick = app[QUICK_RESPONDER]
    assert isinstance(quick, QuickResponders)
    found = quick.of(kind)
    assert found is not None, f"no {kind.__name__} among the quick responders"
    return found


@pytest.fixture
async def production_client(aiohttp_client: AiohttpClient, upload_dir: Path) -> Client:
    """Like ``client``, through the production runner (see :class:`ProductionServer`)."""
    return await serve_production(aiohttp_client, upload_dir)


def stored_files(folder: Path) -> list[str]:
    """Published files, sorted (dot-names, never served, are the catalog's and the storage's)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def temp_files(folder: Path) -> list[Path]:
    """Every temporary file left under .incoming (the live process's lock file excepted)."""
    # os.walk, not rglob: the server empties and removes batch folders in the background
    # (a withdrawn batch's trash), and rglob fails on a folder gone between listing and
    # scanning, where walk skips it.
    found = (
        Path(parent, name)
        for parent, _, names in os.walk(folder / INCOMING_DIR)
        for name in names
        if name != ".lock"
    )
    return sorted(p for p in found if p.is_file())


def assert_nothing_stored(folder: Path) -> None:
    assert stored_files(folder) == []
    assert temp_files(folder) == []
