"""The reference tus server of TL and TB: Node's @tus/server with @tus/file-store (npm, pinned by
bench/tus_reference/package-lock.json; ``make bench`` runs ``npm ci`` there)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.proc import free_port, process_tree, stop_process, wait_for_http

PACKAGE = Path(__file__).resolve().parent / "tus_reference"


class TusReference:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.base_url + "/files/"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("node") is not None and (PACKAGE / "node_modules" / "@tus").is_dir()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        node = shutil.which("node")
        assert node is not None
        self._process = subprocess.Popen(
            [node, str(PACKAGE / "server.mjs"), str(self.port), str(self.directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        wait_for_http(self.base_url + "/files/", self._process, accept=(200, 400, 404, 405, 412))

    def processes(self) -> list[int]:
        assert self._process is not None
        return process_tree(self._process.pid)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None
