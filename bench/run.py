"""``make bench`` / ``python -m bench.run``: clustr_aio against nginx on this machine.

In one run it makes its data (bench/data.py), starts clustr_aio (FSYNC=false, limits raised,
access log off; plus an FSYNC=true one for D and a WORKERS=2 one for C2/S2 when the checkout has
WORKERS) and nginx with the dav module (bench/nginx.py), then runs every scenario
(bench/scenarios.py) in interleaved rounds, A then B, so that load from elsewhere on the machine
hits both sides alike. What counts is the median of the per-round ratios A/B.

Before each measurement the previous one's files are deleted and the page cache's dirty pages
flushed (``sync``), so no side pays for the other's writeback; both sides' files and temporary
files are on the same filesystem.

Environment:
    BENCH_ROUNDS       rounds (default 5: about 6 minutes)
    BENCH_ONLY         comma-separated scenario keys to run, e.g. L,B (default: all); L0, B0
                       and C0 are L, B and C with the per-file work nginx does not do (sha256)
                       switched off in the server (bench/filework.py)
    BENCH_SECONDS      wrk duration per measurement (default 8)
    BENCH_CONNECTIONS  wrk connections (default 16)
    BENCH_OUT          where latest.json and ratios.png go (default bench/results)
    BENCH_DATABASE_URL a PostgreSQL database (postgresql://…) for KP and K2P, K and K2 on
                       PostgreSQL (filled with BENCH_CATALOG_RECORDS records once, and kept);
                       unset: those two are left out
    BENCH_PROFILE      a folder: first record each clustr_aio side (A, and B where it is
                       clustr_aio too) once under py-spy into it, as collapsed stacks
                       (flamegraph.pl input)
                       (with BENCH_ROUNDS=0, only that)
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import filework, no_catalog, report
from bench.ab import Variant
from bench.attic import Attic
from bench.clients import WRK_THREADS, post_files
from bench.clustr import ClustrServer
from bench.data import ensure_data
from bench.images import ensure_photos
from bench.nginx import Nginx
from bench.proc import MIB, cpu_seconds, free_port, machine_idle_seconds
from bench.scenarios import FILE_WORK, STATIC_NAME, Scenario, Setup, Side, build
from bench.tus_reference import TusReference

BENCH_DIR = Path(__file__).resolve().parent
KEYED_ENV = {
    "AUTH": "keys",
    "RATE_LIMIT_REQUESTS": "1000000000/s",
    "RATE_LIMIT_UPLOAD_BYTES": "1000TiB/s",
}


def main() -> int:
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    only = {k.strip() for k in os.environ.get("BENCH_ONLY", "").split(",") if k.strip()}
    out = Path(os.environ.get("BENCH_OUT", BENCH_DIR / "results"))
    profile_dir = os.environ.get("BENCH_PROFILE")
    data = ensure_data(BENCH_DIR / "data")
    photos = ensure_photos(BENCH_DIR / "data")
    work = BENCH_DIR / "data" / "run"  # the same filesystem as the data, for both servers
    shutil.rmtree(work, ignore_errors=True)

    nginx = Nginx(work / "nginx", work / "nginx-root", free_port())
    plain = ClustrServer(work / "plain", fsync=False, extra_env={})
    bare = ClustrServer(
        work / "bare", fsync=False, extra_env={}, prelude=filework.PRELUDE, label=FILE_WORK
    )
    synced = ClustrServer(work / "synced", fsync=True, extra_env={})
    multi = ClustrServer(work / "multi", fsync=False, workers=2, extra_env={})
    thumbnails = ClustrServer(work / "thumbnails", fsync=False, workers=2, extra_env={})
    gallery = ClustrServer(work / "gallery", fsync=False, extra_env={})
    # M's two sides alike but for the setting, with the same history (sharing the plain server
    # with B and C made its side of M measurably slower).
    stripped = ClustrServer(
        work / "stripped", fsync=False, extra_env={"STRIP_METADATA": "location"}
    )
    unstripped = ClustrServer(
        work / "unstripped", fsync=False, extra_env={"STRIP_METADATA": "none"}
    )
    # Scenario A: access control on, limits far above what the benchmark reaches.
    keyed = ClustrServer(work / "keyed", fsync=False, extra_env=KEYED_ENV)
    key = keyed.create_key("bench", "upload")
    uncatalogued = Variant("no catalog", work / "uncatalogued", no_catalog.PRELUDE, {})
    uncatalogued.label += ", catalog disabled"
    servers = [
        plain,
        bare,
        synced,
        multi,
        thumbnails,
        gallery,
        stripped,
        unstripped,
        keyed,
        uncatalogued,
    ]
    reference = TusReference(work / "tus-reference") if TusReference.available() else None
    try:
        nginx.start()
        if reference is not None:
            reference.start()
        for server in servers:
            server.start()
        # WORKERS=2 counts only if this checkout pre-forks; else the 1-worker numbers suffice.
        has_workers = _wait_for_workers(multi, workers=2)
        if not has_workers:
            multi.stop()
            servers.remove(multi)
        _store_static_file(data.single, nginx, [s for s in servers if s is not keyed])
        setup = Setup(
            data=data,
            nginx=nginx,
            plain=plain,
            bare=bare,
            synced=synced,
            multi=multi if has_workers else None,
            photos=photos,
            thumbnails=thumbnails,
            gallery=gallery,
            stripped=stripped,
            unstripped=unstripped,
            uncatalogued=uncatalogued,
            wrk_seconds=int(os.environ.get("BENCH_SECONDS", "8")),
            wrk_connections=int(os.environ.get("BENCH_CONNECTIONS", "16")),
            attic=Attic(work / "attic"),
            tus_reference=reference,
            keyed=keyed,
            key=key,
        )
        scenarios = [s for s in build(setup) if not only or s.key in only]
        if profile_dir:
            _profile(scenarios, Path(profile_dir))
        results = _run_rounds(scenarios, rounds)
    finally:
        for server in servers:
            server.stop()
        if reference is not None:
            reference.stop()
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)

    if rounds == 0:
        return 0  # BENCH_ROUNDS=0: a profiling pass only
    meta = _meta(rounds, setup, has_workers)
    out.mkdir(parents=True, exist_ok=True)
    text = report.table(results, meta["machine"]["summary"])
    print()
    print(f"{meta['date']}, {meta['machine']['summary']}, {rounds} rounds")
    print(text)
    for line in report.file_work(results):
        print(line)
    for line in filework.step_lines({r.key for r in results}, data):
        print(line)
    for note in meta["notes"]:
        print(f"- {note}")
    report.write_json(out / "latest.json", results, meta)
    report.chart(out / "ratios.png", results, f"{meta['date']} · {meta['machine']['summary']}")
    (out / "latest.md").write_text(text)
    print(f"\nwrote {out / 'latest.json'} and {out / 'ratios.png'}")
    return 0


def _wait_for_workers(server: ClustrServer, *, workers: int) -> bool:
    """Whether the server pre-forked: a supervisor and its workers, or at least more than one."""
    deadline = time.monotonic() + 10
    while len(server.processes()) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(server.processes()) > 1


def _store_static_file(jpeg: Path, nginx: Nginx, servers: list[ClustrServer]) -> None:
    """Scenario S's file: uploaded to each clustr_aio server, copied into nginx's root."""

    staged = BENCH_DIR / "data" / "run" / STATIC_NAME
    shutil.copyfile(jpeg, staged)
    for server in servers:
        post_files(server.base_url + "/api/upload", (staged,))
    shutil.copyfile(jpeg, nginx.static_dir / STATIC_NAME)


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: float
    bad_responses: int
    cpu_per_request: float
    """Seconds of the server's CPU time (all processes and threads) per request."""
    idle_per_request: float
    """Core-seconds the whole machine was idle during the measurement, per request."""
    peaks: list[int]


def _measure(side: Side, tag: str) -> _Outcome:
    side.clear()
    os.sync()  # the previous measurement's writeback must not be billed to this one
    for server in side.servers:
        server.reset_peak()
    processes = side.processes()
    cpu_before, idle_before = cpu_seconds(processes), machine_idle_seconds()
    measurement = side.measure(tag)
    cpu = cpu_seconds(processes) - cpu_before
    idle = machine_idle_seconds() - idle_before
    peaks = [peak for server in side.servers for peak in server.peaks()]
    side.clear()
    requests = measurement.requests
    return _Outcome(
        measurement.value, measurement.bad_responses, cpu / requests, idle / requests, peaks
    )


def _run_rounds(scenarios: list[Scenario], rounds: int) -> list[report.ScenarioResult]:
    results = [
        report.ScenarioResult(
            s.key,
            s.title,
            s.unit,
            s.target,
            s.a.label,
            s.b.label,
            s.cpu_target,
            s.file_work_of,
            s.rss_sum_limit_mib,
        )
        for s in scenarios
    ]
    # Warm-up, not counted: the first gigabytes written after boot or a long pause are much
    # slower here (the VM's memory is touched for the first time), whichever side comes first.
    for scenario in scenarios:
        if scenario.unit == "s":
            _measure(scenario.a, f"{scenario.key}-warm-a")
            _measure(scenario.b, f"{scenario.key}-warm-b")
    for n in range(1, rounds + 1):
        for scenario, result in zip(scenarios, results, strict=True):
            a = _measure(scenario.a, f"{scenario.key}-{n}-a")
            b = _measure(scenario.b, f"{scenario.key}-{n}-b")
            result.a_values.append(a.value)
            result.b_values.append(b.value)
            result.a_cpu.append(a.cpu_per_request)
            result.b_cpu.append(b.cpu_per_request)
            result.a_idle.append(a.idle_per_request)
            result.b_idle.append(b.idle_per_request)
            result.a_bad_responses += a.bad_responses
            result.peak_rss.append(a.peaks)
            rss = ", ".join(f"{p / MIB:.0f}" for p in a.peaks)
            bad = f" ({a.bad_responses} non-2xx)" if a.bad_responses else ""
            print(
                f"round {n}/{rounds} {scenario.key}: A {a.value:.3f} {scenario.unit}{bad}, "
                f"B {b.value:.3f} {scenario.unit}, A/B {a.value / b.value:.2f}, "
                f"server CPU {_cpu_text(a, b, scenario.unit)} "
                f"(A/B {a.cpu_per_request / max(b.cpu_per_request, 1e-9):.2f}), "
                f"peak RSS {rss} MiB",
                flush=True,
            )
    return results


def _cpu_text(a: _Outcome, b: _Outcome, unit: str) -> str:
    if unit == "s":
        return f"A {a.cpu_per_request:.2f} s B {b.cpu_per_request:.2f} s"
    return f"A {a.cpu_per_request * 1e3:.2f} ms B {b.cpu_per_request * 1e3:.2f} ms per request"


def _profile(scenarios: list[Scenario], folder: Path) -> None:
    """Record each scenario's clustr_aio sides once under py-spy (not timed: sampling slows
    it): both, where both are clustr_aio (A: keyed and open), so that they can be compared."""
    folder.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    for scenario in scenarios:
        for name, side in (("a", scenario.a), ("b", scenario.b)):
            for server in side.servers:
                target = folder / f"profile-{scenario.key}-{name}-{server.port}.txt"
                recorder = subprocess.Popen(
                    [
                        *(str(py_spy), "record", "--subprocesses", "--threads", "--nonblocking"),
                        *("-r", "200", "--format", "raw", "-p", str(server.pid)),
                        *("-o", str(target)),
                    ],
                    stdout=subprocess.DEVNULL,
                )
                try:
                    _measure(side, f"profile-{scenario.key}-{name}")
                finally:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(timeout=120)
                print(f"profile of {scenario.key} side {name.upper()}: {target}", flush=True)


def _meta(rounds: int, setup: Setup, has_workers: bool) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    cores = os.cpu_count() or 0
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    nginx_version = subprocess.run(
        ["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    notes = [
        "Ratios are A/B per round; the machine is shared, so single rounds are noisy and only "
        "the median of the per-round ratios is compared with the target.",
        "Peak RSS is the kernel's VmHWM of each clustr_aio process, reset before each "
        "measurement; with WORKERS=2 it is given per process and summed.",
        "nginx runs one worker process (one core, like one clustr_aio event loop; the other "
        f"core runs the client), also against WORKERS=2; wrk runs {WRK_THREADS} thread with "
        f"{setup.wrk_connections} connections for {setup.wrk_seconds} s.",
    ]
    if not has_workers:
        notes.append("WORKERS=2 did not start two processes: C and S ran with one worker only.")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"make bench  (BENCH_ROUNDS={rounds})",
        "rounds": rounds,
        "machine": {
            "summary": f"{cores} cores {cpu}, {memory_gib:.0f} GiB, Linux {platform.release()}",
            "cpu": cpu,
            "cores": cores,
            "memory_gib": round(memory_gib, 1),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "aiohttp": version("aiohttp"),
            "nginx": nginx_version,
        },
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
