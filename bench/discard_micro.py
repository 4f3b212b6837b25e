"""Micro-benchmark: withdrawing a published batch (a commit that failed), in this process.

Run: ``.venv/bin/python -m bench.discard_micro [files] [--fsync]`` (default 10,000 files)

A batch of small files is received into a LocalStorage under bench/data, published, then
discarded; the discard's wall time is what the client's answer waits for. Freeing an inode
costs this machine's journal-less ext4 about 0.7 ms, so the discard renames the files out of
the folder and frees them afterwards (bench/attic.py has the same cause).

``files --leave-out N [--rounds R]``: files refused inside a batch that keeps the others
(``atomic=false``, ``DEDUPE=reuse`` duplicates), N of ``files`` spread evenly, two ways side by
side, R rounds alternating:
*delete*, as the pipeline did before issue 10's leftovers (publish them all, then one
``Deleting.delete`` per refused file: an unlink, and a flush of the folder with FSYNC), and
*leave out* (``UploadBatch.leave_out`` before the publish: never linked, removed in the
background). Wall time and this process's CPU (every thread) until the batch is sealed, i.e.
what the answer waits for; medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from clustr_aio.storage.local import LocalBatch, LocalStorage

DATA = Path(__file__).resolve().parent / "data"


@contextlib.asynccontextmanager
async def received(files: int, *, fsync: bool) -> AsyncIterator[tuple[LocalStorage, LocalBatch]]:
    """A LocalStorage in a fresh folder under bench/data, and a batch of ``files`` small files
    received into it; the storage is closed (and waited for) on the way out."""
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as folder:
        storage = LocalStorage(Path(folder), fsync=fsync)
        await storage.open()
        try:
            batch = storage.batch()
            for n in range(files):
                writer = batch.add_file(f"photo-{n}.jpg")
                await writer.write(b"\xff\xd8\xff" + bytes(1000))
                await writer.close()
            yield storage, batch
        finally:
            await storage.close()  # waits for the files to be freed


async def measure(files: int, *, fsync: bool) -> tuple[float, float, float]:
    """Seconds to publish, to discard, and until the discarded files were all freed."""
    async with received(files, fsync=fsync) as (_, batch):
        started = time.perf_counter()
        await batch.publish()
        published = time.perf_counter()
        await batch.discard()
        discarded = time.perf_counter()
    freed = time.perf_counter()
    return published - started, discarded - published, freed - published


async def measure_left_out(
    files: int, left_out: int, *, fsync: bool, by_delete: bool
) -> tuple[float, float]:
    """Wall and CPU seconds from the publish to the seal of a batch of ``files`` of which
    ``left_out`` are refused."""
    refused = {n * files // left_out for n in range(left_out)}
    async with received(files, fsync=fsync) as (storage, batch):
        wall, cpu = time.perf_counter(), time.process_time()
        if by_delete:
            names = await batch.publish()
            for n in sorted(refused):
                await storage.delete(names[n])
        else:
            await batch.leave_out(refused)
            await batch.publish()
        await batch.seal()
        return time.perf_counter() - wall, time.process_time() - cpu


def left_out_main(files: int, left_out: int, rounds: int, fsync: bool) -> int:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(rounds):
        for by_delete in (True, False):
            results[by_delete].append(
                asyncio.run(measure_left_out(files, left_out, fsync=fsync, by_delete=by_delete))
            )
    medians = {
        way: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for way, runs in results.items()
    }
    (dw, dc), (lw, lc) = medians[True], medians[False]
    print(
        f"{files} files, {left_out} refused, FSYNC={str(fsync).lower()}, {rounds} rounds "
        f"(medians, publish to seal):\n"
        f"  delete:   {dw * 1000:8.1f} ms wall, {dc * 1000:8.1f} ms CPU\n"
        f"  leave out:{lw * 1000:8.1f} ms wall, {lc * 1000:8.1f} ms CPU\n"
        f"  leave out / delete: wall {lw / dw:.2f}, CPU {lc / dc:.2f}"
    )
    return 0


def main() -> int:
    files = int(next((a for a in sys.argv[1:] if a.isdigit()), "10000"))
    fsync = "--fsync" in sys.argv
    if "--leave-out" in sys.argv:
        left_out = int(sys.argv[sys.argv.index("--leave-out") + 1])
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
        return left_out_main(files, left_out, rounds, fsync)
    publish, discard, freed = asyncio.run(measure(files, fsync=fsync))
    print(
        f"{files} files, FSYNC={str(fsync).lower()}: publish {publish:.2f} s, discard "
        f"{discard:.2f} s (the answer waits this long), all freed after {freed:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
