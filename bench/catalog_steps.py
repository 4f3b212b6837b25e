"""Where a check of 10,000 digests (bench/catalog.py's K2, K2P) spends its time, step by step:
the body's validation, lower-casing, the catalog's look-up, and the answer, each with the
CPU it took in this process (the reader threads' included: SQLite's query runs there), and for
PostgreSQL on this machine also the CPU of the database's backend process
(``/proc/<pid>/schedstat``), which the figure's wall time waits for but the process never sees.

``python -m bench.catalog_steps`` prints the medians of bench/catalog.py's checks (the same
catalog files and digests), for SQLite and, with ``BENCH_DATABASE_URL``, PostgreSQL. On a
machine shared with other work, the CPU columns are the steadier ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.catalog import CHECK_HASHES, CHECK_ROUNDS, RECORDS, open_filled, sqlite_path
from clustr_aio.catalog.base import Catalog
from clustr_aio.catalog.postgres import PostgresCatalog
from clustr_aio.catalog.sqlite import SqliteCatalog
from clustr_aio.web import bodies
from clustr_aio.web.responses import json_bytes
from clustr_aio.web.routes import files

__all__ = ["steps"]

_STEPS = ("validate", "lower", "look-up wall", "look-up CPU", "backend CPU", "answer", "total")


def _digests(rng: random.Random) -> list[str]:
    """As bench/catalog.py asks: a tenth stored, the rest new, shuffled."""
    known = [
        hashlib.sha256(rng.randrange(RECORDS).to_bytes(8, "big")).hexdigest()
        for _ in range(CHECK_HASHES // 10)
    ]
    digests = known + [rng.randbytes(32).hex() for _ in range(CHECK_HASHES - len(known))]
    rng.shuffle(digests)
    return digests


async def _backend_cpu(catalog: Catalog) -> Callable[[], float]:
    """Seconds of CPU the catalog's one PostgreSQL connection has used, if its backend runs on
    this machine; 0 otherwise (SQLite's are this process's)."""
    if not isinstance(catalog, PostgresCatalog):
        return lambda: 0.0
    pid = await catalog.pool.fetchval("SELECT pg_backend_pid()")
    stat = f"/proc/{pid}/schedstat"
    if not os.path.exists(stat):  # noqa: ASYNC240 (a /proc stat: no disk behind it)
        return lambda: 0.0
    return lambda: int(Path(stat).read_text().split()[0]) / 1e9


async def _one(catalog: Catalog, body: bytes, backend: Callable[[], float]) -> dict[str, float]:
    """One check as the handler makes it (files.check_digests' steps, each timed)."""
    took: dict[str, float] = {}
    wall = time.perf_counter()
    cpu = time.process_time()
    digests = bodies.validated(body, bodies.CHECK_REQUEST)["sha256"]
    took["validate"] = time.process_time() - cpu
    cpu = time.process_time()
    lowered = files._lowered(digests)
    took["lower"] = time.process_time() - cpu
    cpu, server, started = time.process_time(), backend(), time.perf_counter()
    ids = await catalog.ids_by_sha256(lowered)
    took["look-up wall"] = time.perf_counter() - started
    took["look-up CPU"] = time.process_time() - cpu
    took["backend CPU"] = backend() - server
    cpu = time.process_time()
    files.check_answer(digests, lowered, ids)
    took["answer"] = time.process_time() - cpu
    took["total"] = time.perf_counter() - wall
    return took


async def steps(catalog: Catalog, *, seed: int = 12) -> dict[str, float]:
    """Median milliseconds of each step over bench/catalog.py's rounds, after as many to warm up."""
    backend = await _backend_cpu(catalog)
    rng = random.Random(seed)
    rounds: list[dict[str, float]] = []
    for _ in range(2 * CHECK_ROUNDS):
        body = json_bytes({"sha256": _digests(rng)})
        rounds.append(await _one(catalog, body, backend))
    measured = rounds[CHECK_ROUNDS:]
    return {step: statistics.median(r[step] for r in measured) * 1e3 for step in _STEPS}


async def _backend_steps(backend: str, where: str) -> dict[str, float]:
    catalog = (
        PostgresCatalog(where, min_size=1, max_size=1)  # one backend: its CPU is the query's
        if backend == "postgresql"
        else SqliteCatalog(Path(where), durable=False)
    )
    await open_filled(catalog, RECORDS)
    try:
        return await steps(catalog)
    finally:
        await catalog.close()


def main() -> int:
    backends = [("sqlite", str(sqlite_path()))]
    if url := os.environ.get("BENCH_DATABASE_URL"):
        backends.append(("postgresql", url))
    load = os.getloadavg()[0]
    print(f"check of {CHECK_HASHES:,} among {RECORDS:,}, medians in ms (load {load:.1f}):")
    print(f"{'':12}" + "".join(f"{step:>14}" for step in _STEPS))
    for backend, where in backends:
        medians = asyncio.run(_backend_steps(backend, where))
        print(f"{backend:12}" + "".join(f"{medians[step]:14.1f}" for step in _STEPS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
