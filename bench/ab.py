"""A/B of clustr_aio variants, for deciding an optimisation: ``python -m bench.ab``.

Each variant is the same checkout started with a different prelude (Python run before
``python -m clustr_aio``, e.g. one that patches a change back out, or installs uvloop) and extra
environment. The scenarios of bench/run.py (L, B, C, S; clustr_aio's side only) run in interleaved
rounds over all variants, and the server CPU per request is printed next to the rate or time:
on a shared machine it is far steadier than either.

Environment:
    AB_VARIANTS  JSON: {"name": ["prelude", {"ENV": "value"}, "checkout"], ...}; the checkout
                 (optional) is a directory with another commit's code, made with
                 ``git archive COMMIT | tar -x -C DIR``: a before/after of two commits
    AB_ONLY      scenarios (default L,B,C,S)    AB_ROUNDS  rounds (default 3)
    AB_SECONDS   wrk duration (default 4)
    AB_NGINX     1: nginx (bench/nginx.py, as in bench/run.py's side B) runs in every round
                 too, and the summary gives each variant's ratios to it (wall and server CPU)

A variant with ``AUTH=keys`` in its environment gets an upload key (made by its checkout's
CLI), which C sends; L, B and S send none (use such a variant with ``AB_ONLY=C``).

Example, uvloop against asyncio (``EVENT_LOOP``), with the per-file work off as in L0, B0, C0::

    AB_VARIANTS='{"asyncio": ["import bench.filework; bench.filework.switch_off()",
                  {"EVENT_LOOP": "asyncio"}],
                  "uvloop": ["import bench.filework; bench.filework.switch_off()",
                  {"EVENT_LOOP": "uvloop"}]}' \\
        AB_NGINX=1 AB_ONLY=L,B,C,S .venv/bin/python -m bench.ab
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
from pathlib import Path
from typing import Any, Final

from bench.attic import Attic
from bench.clients import post_files, put_file, wrk
from bench.clustr import REPO, ClustrServer
from bench.data import DataSet, ensure_data
from bench.nginx import PUT_PREFIX, STATIC_PREFIX, Nginx
from bench.proc import MIB, cpu_seconds, free_port
from bench.scenarios import STATIC_NAME

BENCH_DIR = Path(__file__).resolve().parent


class Variant(ClustrServer):
    """A clustr_aio server started as ``python -c "<prelude>; <run clustr_aio>"``, from this
    checkout or another one (``source``)."""

    def __init__(
        self, name: str, folder: Path, prelude: str, env: dict[str, str], source: Path = REPO
    ) -> None:
        super().__init__(folder, fsync=False, extra_env=env, prelude=prelude, source=source)
        self.name = name
        self.key = self.create_key("bench", "upload") if env.get("AUTH") == "keys" else None
        """With AUTH=keys: an upload key (scenario C only; L, B and S send none)."""


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
            args=(str(data.single), "c.jpg", *([server.key] if server.key else [])),
        )
    elif scenario == "S":
        result = wrk(f"{server.base_url}/uploads/{STATIC_NAME}", connections=16, seconds=seconds)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return result.requests_per_second, result.requests


def measure_nginx(
    scenario: str, nginx: Nginx, data: DataSet, seconds: int, tag: str
) -> tuple[float, int]:
    """The reference: what bench/run.py's side B does for the same scenario."""
    if scenario == "L":
        return put_file(f"{nginx.base_url}{PUT_PREFIX}{tag}.bin", data.big), 1
    if scenario == "B":
        return put_file(f"{nginx.base_url}{PUT_PREFIX}{tag}.bin", data.batch_concat), 1
    if scenario == "C":
        result = wrk(
            nginx.base_url + PUT_PREFIX,
            connections=16,
            seconds=seconds,
            script="put.lua",
            args=(str(data.single), tag),
        )
    elif scenario == "S":
        result = wrk(
            f"{nginx.base_url}{STATIC_PREFIX}{STATIC_NAME}", connections=16, seconds=seconds
        )
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return result.requests_per_second, result.requests


def main() -> int:
    # A kill (SIGTERM) stops the servers too, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    variants_spec: dict[str, list[Any]] = json.loads(os.environ["AB_VARIANTS"])
    scenarios = os.environ.get("AB_ONLY", "L,B,C,S").split(",")
    rounds = int(os.environ.get("AB_ROUNDS", "3"))
    seconds = int(os.environ.get("AB_SECONDS", "4"))
    with_nginx = os.environ.get("AB_NGINX", "") == "1"
    data = ensure_data(BENCH_DIR / "data")
    work = BENCH_DIR / "data" / "ab"
    shutil.rmtree(work, ignore_errors=True)
    attic = Attic(work / "attic")
    servers = [
        Variant(name, work / name, spec[0], spec[1], Path(spec[2]) if len(spec) > 2 else REPO)
        for name, spec in variants_spec.items()
    ]
    nginx = Nginx(work / "nginx", work / "nginx-root", free_port()) if with_nginx else None
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    peaks: dict[tuple[str, str], list[float]] = {}

    def run(scenario: str, name: str, n: int) -> None:
        server = next((s for s in servers if s.name == name), None)
        if server is None:
            assert nginx is not None
            attic.stash(nginx.put_dir)
            os.sync()
            processes = nginx.processes()
            before = cpu_seconds(processes)
            value, requests = measure_nginx(scenario, nginx, data, seconds, f"{scenario}-{n}")
        else:
            attic.stash(server.upload_folder, keep=frozenset({STATIC_NAME}))
            os.sync()
            server.reset_peak()
            processes = server.processes()
            before = cpu_seconds(processes)
            value, requests = measure(scenario, server, data, seconds)
        cpu = (cpu_seconds(processes) - before) / requests
        peak = max(server.peaks(), default=0) / MIB if server is not None else 0.0
        if n > 0:
            results.setdefault((scenario, name), []).append((value, cpu))
            peaks.setdefault((scenario, name), []).append(peak)
        print(
            f"round {n} {scenario} {name}: {value:.3f}, {cpu * 1e3:.3f} ms CPU per request"
            + (f", peak RSS {peak:.0f} MiB" if server is not None else ""),
            flush=True,
        )

    names = [s.name for s in servers] + ([NGINX] if nginx is not None else [])
    try:
        staged = work / STATIC_NAME
        shutil.copyfile(data.single, staged)
        for server in servers:
            server.start()
            if server.key is None:  # S's file; a keyed server serves C only
                post_files(server.base_url + "/api/upload", (staged,))
        if nginx is not None:
            nginx.start()
            shutil.copyfile(data.single, nginx.static_dir / STATIC_NAME)
        for scenario in scenarios:  # round 0: a warm-up, not counted
            if scenario in ("L", "B"):
                for name in names:
                    run(scenario, name, 0)
        for n in range(1, rounds + 1):
            for scenario in scenarios:
                # The order turns each round, so no side always follows the same one.
                for name in names[n % len(names) :] + names[: n % len(names)]:
                    run(scenario, name, n)
    finally:
        for server in servers:
            server.stop()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(_summary(results, scenarios, names, nginx is not None))
    for (scenario, name), values in peaks.items():
        print(f"peak RSS {scenario} {name}: largest {max(values):.0f} MiB")
    return 0


NGINX: Final = "nginx"


def _summary(
    results: dict[tuple[str, str], list[tuple[float, float]]],
    scenarios: list[str],
    names: list[str],
    with_nginx: bool,
) -> str:
    """Medians per scenario and variant; with nginx, also the medians of the per-round ratios
    to nginx's figure (rate, or time) and to its server CPU."""
    lines = [
        "| scenario | variant | wall (s, or req/s) | server CPU (ms per request) "
        + ("| wall / nginx | CPU / nginx |" if with_nginx else "|"),
        "|---|---|---|---|" + ("---|---|" if with_nginx else ""),
    ]
    for scenario in scenarios:
        reference = results.get((scenario, NGINX), [])
        for name in names:
            values = results.get((scenario, name), [])
            if not values:
                continue
            value = statistics.median(v for v, _ in values)
            cpu = statistics.median(c for _, c in values)
            line = f"| {scenario} | {name} | {value:.3f} | {cpu * 1e3:.3f} |"
            if with_nginx:
                if name == NGINX or len(reference) != len(values):
                    line += " | |"
                else:
                    wall = statistics.median(
                        v / r for (v, _), (r, _) in zip(values, reference, strict=True)
                    )
                    ratio = statistics.median(
                        c / r for (_, c), (_, r) in zip(values, reference, strict=True)
                    )
                    line += f" {wall:.2f} | {ratio:.2f} |"
            lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
