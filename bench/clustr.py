"""clustr_aio as the benchmark runs it: ``python -m clustr_aio`` in a subprocess, configured
only through the environment, as systemd would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.proc import (
    free_port,
    peak_rss,
    process_tree,
    reset_peak_rss,
    stop_process,
    wait_for_http,
)

REPO = Path(__file__).resolve().parent.parent
# python -m clustr_aio, after a prelude; the working directory (the checkout) comes first on
# sys.path, so another checkout's code runs, not this one's.
_RUN_MODULE = "import runpy; runpy.run_module('clustr_aio', run_name='__main__', alter_sys=True)"


class ClustrServer:
    """One clustr_aio server with its own upload folder and port."""

    def __init__(
        self,
        upload_folder: Path,
        *,
        fsync: bool,
        workers: int = 1,
        extra_env: dict[str, str],
        prelude: str = "",
        label: str = "",
        source: Path = REPO,
    ) -> None:
        """``prelude``: Python run before ``python -m clustr_aio`` in the server process (see
        bench/filework.py); ``source``: the checkout to run (another commit's, for an A/B)."""
        self.upload_folder = upload_folder
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.label = (
            f"FSYNC={str(fsync).lower()}"
            + (f" WORKERS={workers}" if workers > 1 else "")
            + "".join(f" {name}={value}" for name, value in extra_env.items())
        )
        if label:
            self.label += f" {label}"
        self._code = f"{prelude}\n{_RUN_MODULE}" if prelude else _RUN_MODULE
        self._source = source
        self._env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "UPLOAD_FOLDER": str(upload_folder),
            "FSYNC": str(fsync).lower(),
            # Limits raised: the 1 GiB file of scenario L and the 500 files of B must fit.
            "MAX_FILE_SIZE": "2GiB",
            "MAX_REQUEST_SIZE": "4GiB",
            "MAX_FILES": "10000",
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "RELOAD": "false",
            # No developer .env: an empty one, so only the repository's config.toml and the above.
            "ENV_FILE": os.devnull,
            # As deploy/clustr-aio.service runs it.
            "MALLOC_ARENA_MAX": "2",
            **({"WORKERS": str(workers)} if workers > 1 else {}),
            **extra_env,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.upload_folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._code],
            env=self._env,
            cwd=self._source,
            stdin=subprocess.DEVNULL,
        )
        wait_for_http(self.base_url + "/", self._process)

    def create_key(self, name: str, scopes: str) -> str:
        """An API key made by the real CLI on this server's catalog (before or while it runs)."""
        self.upload_folder.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [sys.executable, "-m", "clustr_aio", "keys", "create", name, "--scopes", scopes],
            env=self._env,
            cwd=self._source,  # that checkout's CLI, on that checkout's catalog schema
            capture_output=True,
            text=True,
            check=True,
        )
        return made.stdout.strip()

    def processes(self) -> list[int]:
        """The server's processes: one, or a supervisor and its workers with WORKERS=N."""
        return process_tree(self.pid)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def reset_peak(self) -> bool:
        return reset_peak_rss(self.processes())

    def peaks(self) -> list[int]:
        """Peak RSS of each process of the server (the master first), since the last reset."""
        return peak_rss(self.processes())

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)  # SIGTERM: drains, then exits (workers too)
            self._process = None
