"""``seaweedfs_server``: one real SeaweedFS for the whole session (tests/seaweed_server.py),
started on loopback by the tests themselves, skipped nowhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.seaweed_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer", "seaweedfs_server"]


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[SeaweedServer]:
    server = SeaweedServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
