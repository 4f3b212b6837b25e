"""A/B of clustr_aio variants, for deciding an optimisation: ``python -m bench.ab``.

Each variant is the same checkout started with a different prelude (Python run before
``python -m clustr_aio``, e.g. one that patches a change back out, or installs uvloop) and extra
environment. The scenarios of bench/run.py (L, B, C, S; clustr_aio's side only) run in interleaved
rounds over all variants, and the server CPU per request is printed next to the rate or time:
on a shared machine it is far steadier than either.

Environment:
    AB_VARIANTS  JSON: {"name": ["prelude", {"ENV": "value"}], ...}
    AB_ONLY      scenarios (default L,B,C,S)    AB_ROUNDS  rounds (default 3)
    AB_SECONDS   wrk duration (default 4)

Example, uvloop against asyncio::

    AB_VARIANTS='{"asyncio": ["", {}], "uvloop": ["import uvloop; uvloop.install()", {}]}' \\
        AB_ONLY=C,S .venv/bin/python -m bench.ab
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.attic import Attic
from bench.clients import post_files, wrk
from bench.clustr import REPO, ClustrServer
from bench.data import DataSet, ensure_data
from bench.proc import cpu_seconds, wait_for_http
from bench.scenarios import STATIC_NAME

BENCH_DIR = Path(__file__).resolve().parent
_RUN_MODULE = "import runpy; runpy.run_module('clustr_aio', run_name='__main__', alter_sys=True)"


class Variant(ClustrServer):
    """A clustr_aio server started as ``python -c "<prelude>; <run clustr_aio>"``."""

    def __init__(self, name: str, folder: Path, prelude: str, env: dict[str, str]) -> None:
        super().__init__(folder, fsync=False, extra_env=env)
        self.name = name
        self._code = f"{prelude}\n{_RUN_MODULE}" if prelude else _RUN_MODULE

    def start(self) -> None:
        self.upload_folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._code], env=self._env, cwd=REPO, stdin=subprocess.DEVNULL
        )
        wait_for_http(self.base_url + "/", self._process)


def measure(scenario: str, server: Variant, data: DataSet, seconds: int) -> tuple[float, int]:
    """The scenario's number (seconds or requests/s) and the requests it made."""
    upload = server.base_url + "/api/upload"
    if scenario == "L":
        return post_files(upload, (data.big,)), 1
    if scenario == "B":
        return post_files(upload, data.jpegs), 1
    if scenario == "C":
        result = wrk(
            upload,
            connections=16,
            seconds=seconds,
            script="upload.lua",
            args=(str(data.single), "c.jpg"),
        )
    elif scenario == "S":
        result = wrk(f"{server.base_url}/uploads/{STATIC_NAME}", connections=16, seconds=seconds)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return result.requests_per_second, result.requests


def main() -> int:
    variants_spec: dict[str, list[Any]] = json.loads(os.environ["AB_VARIANTS"])
    scenarios = os.environ.get("AB_ONLY", "L,B,C,S").split(",")
    rounds = int(os.environ.get("AB_ROUNDS", "3"))
    seconds = int(os.environ.get("AB_SECONDS", "4"))
    data = ensure_data(BENCH_DIR / "data")
    work = BENCH_DIR / "data" / "ab"
    shutil.rmtree(work, ignore_errors=True)
    attic = Attic(work / "attic")
    servers = [
        Variant(name, work / name, prelude, env) for name, (prelude, env) in variants_spec.items()
    ]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        staged = work / STATIC_NAME
        shutil.copyfile(data.single, staged)
        for server in servers:
            server.start()
            post_files(server.base_url + "/api/upload", (staged,))
        for n in range(rounds):
            for scenario in scenarios:
                for server in servers:
                    attic.stash(server.upload_folder, keep=frozenset({STATIC_NAME}))
                    os.sync()
                    processes = server.processes()
                    before = cpu_seconds(processes)
                    value, requests = measure(scenario, server, data, seconds)
                    cpu = (cpu_seconds(processes) - before) / requests
                    results.setdefault((scenario, server.name), []).append((value, cpu))
                    print(
                        f"round {n + 1} {scenario} {server.name}: {value:.3f}, "
                        f"{cpu * 1e3:.3f} ms CPU per request",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("medians:")
    for (scenario, name), values in results.items():
        value = statistics.median(v for v, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"  {scenario} {name}: {value:.3f}, {cpu * 1e3:.3f} ms CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
