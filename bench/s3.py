"""``python -m bench.s3`` (part of ``make bench``): STORAGE=s3 against a SeaweedFS on loopback.

- **L3**: the 1 GiB file through clustr_aio (curl → server → bucket, multipart, 16 MiB parts)
  vs boto3's own ``upload_file`` of the same bytes straight to SeaweedFS (its default transfer
  config: 8 MiB parts, 10 threads).
- **B3**: the 500 photos in one request through clustr_aio vs boto3 ``put_object`` of the same
  500 files with 16 threads.
- **RSS**: clustr_aio's peak RSS in each, against the stated bound
  (:func:`~clustr_aio.storage.s3.upload.memory_bound`): 64 MiB + S3_PART_SIZE x parts in
  flight, for one upload; and what the process holds idle (measured here, once it has started
  and answered ``/readyz``, which has its S3 client write to the bucket) against those 64 MiB.

Rounds alternate A and B; the figure is the median of the per-round ratios, wall time and the
CPU time of clustr_aio (server) beside the client's. SeaweedFS's own CPU is the same work on
both sides and is reported too.

Environment: BENCH_ROUNDS (default 3; 0 runs nothing), BENCH_OUT (default bench/results),
BENCH_S3_PART_MIB (S3_PART_SIZE in MiB, default 16), BENCH_ONLY (comma-separated keys as
bench/run.py's, e.g. B3: this runs the ones of L3 and B3 it names, nothing if it names neither;
unset: both).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.clients import post_files
from bench.clustr import ClustrServer
from bench.data import ensure_data
from bench.proc import MIB, cpu_seconds, process_tree
from clustr_aio.storage.s3.upload import PROCESS_MEMORY, memory_bound, parts_in_flight
from tests.seaweed_server import SeaweedServer

BENCH_DIR = Path(__file__).resolve().parent
PART_SIZE = int(os.environ.get("BENCH_S3_PART_MIB", "16")) * MIB


def main() -> int:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    out = Path(os.environ.get("BENCH_OUT", BENCH_DIR / "results"))
    only = {k.strip() for k in os.environ.get("BENCH_ONLY", "").split(",") if k.strip()}
    if rounds == 0 or (only and not only & {"L3", "B3"}):
        return 0  # a profiling pass of bench/run.py, or other scenarios asked for only
    data = ensure_data(BENCH_DIR / "data")
    weed = SeaweedServer()
    weed.start()
    bucket = weed.new_bucket()
    server = ClustrServer(
        BENCH_DIR / "data" / "run" / "s3", fsync=False,
        extra_env={**weed.settings(bucket), "S3_PART_SIZE": f"{PART_SIZE}", "DEDUPE": "off"},
    )  # fmt: skip
    client = weed.client()
    keys = [key for key in ("L3", "B3") if not only or key in only]
    results: dict[str, list[dict[str, float]]] = {key: [] for key in keys}
    try:
        server.start()
        urllib.request.urlopen(server.base_url + "/readyz", timeout=30).read()
        server.reset_peak()
        idle = max(server.peaks())
        bound = memory_bound(PART_SIZE)
        print(
            f"clustr_aio idle: {idle / MIB:.1f} MiB (base {PROCESS_MEMORY / MIB:.0f} MiB); stated"
            f" peak RSS bound: {PROCESS_MEMORY / MIB:.0f} MiB + {PART_SIZE / MIB:.0f} MiB x"
            f" {parts_in_flight(PART_SIZE)} parts in flight = {bound / MIB:.0f} MiB"
        )
        weed_pids = process_tree(weed.pid)
        for n in range(rounds):
            for key, ours, theirs in (
                ("L3", lambda: post_files(server.base_url + "/api/upload", [data.big]),
                 lambda: client.upload_file(str(data.big), bucket, f"direct/{time.time_ns()}.jpg")),
                ("B3", lambda: post_files(server.base_url + "/api/upload", list(data.jpegs)),
                 lambda: _put_all(client, bucket, data.jpegs)),
            ):  # fmt: skip
                if key not in results:
                    continue
                server.reset_peak()
                a = _timed(ours, server.processes(), weed_pids)
                a["peak_rss_mib"] = max(server.peaks()) / MIB
                b = _timed(theirs, [os.getpid()], weed_pids)
                results[key].append({**{f"clustr_{k}": v for k, v in a.items()},
                                     **{f"boto3_{k}": v for k, v in b.items()}})  # fmt: skip
                print(f"round {n + 1} {key}: clustr_aio {a['wall']:.2f}s (server CPU "
                      f"{a['cpu']:.2f}s, peak RSS {a['peak_rss_mib']:.0f} MiB), boto3 "
                      f"{b['wall']:.2f}s (client CPU {b['cpu']:.2f}s)", flush=True)  # fmt: skip
                _empty(client, bucket)
    finally:
        server.stop()
        weed.close()
    summary = {
        key: {
            "wall_ratio": statistics.median(r["clustr_wall"] / r["boto3_wall"] for r in rows),
            "clustr_wall_s": statistics.median(r["clustr_wall"] for r in rows),
            "boto3_wall_s": statistics.median(r["boto3_wall"] for r in rows),
            "clustr_server_cpu_s": statistics.median(r["clustr_cpu"] for r in rows),
            "boto3_client_cpu_s": statistics.median(r["boto3_cpu"] for r in rows),
            "seaweedfs_cpu_clustr_s": statistics.median(r["clustr_store_cpu"] for r in rows),
            "seaweedfs_cpu_boto3_s": statistics.median(r["boto3_store_cpu"] for r in rows),
            "clustr_peak_rss_mib": max(r["clustr_peak_rss_mib"] for r in rows),
        }
        for key, rows in results.items()
    }
    peak = max(row["clustr_peak_rss_mib"] for rows in results.values() for row in rows)
    summary["part_size_mib"] = {"L3": PART_SIZE / MIB}
    summary["rss"] = {
        "idle_mib": idle / MIB,
        "base_mib": PROCESS_MEMORY / MIB,
        "parts_in_flight": parts_in_flight(PART_SIZE),
        "bound_mib": bound / MIB,
        "peak_mib": peak,
        "met": peak <= bound / MIB and idle <= PROCESS_MEMORY,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3-latest.json").write_text(
        json.dumps({"rounds": results, "summary": summary}, indent=2)
    )
    print(json.dumps(summary, indent=2))
    return 0


def _timed(work: object, pids: list[int], store_pids: list[int]) -> dict[str, float]:
    assert callable(work)
    cpu0, store0, t0 = cpu_seconds(pids), cpu_seconds(store_pids), time.perf_counter()
    work()
    wall = time.perf_counter() - t0
    return {"wall": wall, "cpu": cpu_seconds(pids) - cpu0,
            "store_cpu": cpu_seconds(store_pids) - store0}  # fmt: skip


def _put_all(client: object, bucket: str, files: tuple[Path, ...]) -> None:
    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"direct/{path.name}", Body=path.read_bytes())  # type: ignore[attr-defined]

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))


def _empty(client: object, bucket: str) -> None:
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket):
        objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
