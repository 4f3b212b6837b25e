"""RELOAD=true (``make dev``): the server restarts when its code changes."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from tests.process.conftest import StartServer
from tests.server_process import REPO, WAIT_SECONDS, RunningServer, wait_until


def hello(server: RunningServer) -> dict[str, str]:
    with urllib.request.urlopen(server.url + "/", timeout=WAIT_SECONDS) as reply:
        result: dict[str, str] = json.load(reply)
        return result


def test_a_code_change_restarts_the_server(server_factory: StartServer, tmp_path: Path) -> None:
    # A copy of the package, so that the test can change "the code" without touching ours.
    directory = tmp_path / "project"
    shutil.copytree(
        REPO / "clustr_aio",
        directory / "clustr_aio",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    server = server_factory({"RELOAD": "true", "PYTHONPATH": str(directory)}, directory=directory)
    assert hello(server) == {"message": "Hello World"}
    starts = server.logs.count("clustr_aio listening on")
    assert starts == 1

    root = directory / "clustr_aio" / "web" / "routes" / "root.py"
    root.write_text(root.read_text().replace('"Hello World"', '"Hello again"'))
    wait_until(
        lambda: server.logs.count("clustr_aio listening on") == 2,
        lambda: f"a restart:\n{server.logs}",
    )
    assert hello(server) == {"message": "Hello again"}
    assert server.stop() == 0, server.logs
