"""Micro-benchmark: withdrawing a published batch (a commit that failed), in this process.

Run: ``.venv/bin/python -m bench.discard_micro [files] [--fsync]`` (default 10,000 files)

A batch of small files is received into a LocalStorage under bench/data, published, then
discarded; the discard's wall time is what the client's answer waits for. Freeing an inode
costs this machine's journal-less ext4 about 0.7 ms, so the discard renames the files out of
the folder and frees them afterwards (bench/attic.py has the same cause).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from clustr_aio.storage.local import LocalStorage

DATA = Path(__file__).resolve().parent / "data"


async def measure(files: int, *, fsync: bool) -> tuple[float, float, float]:
    """Seconds to publish, to discard, and until the discarded files were all freed."""
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
            started = time.perf_counter()
            await batch.publish()
            published = time.perf_counter()
            await batch.discard()
            discarded = time.perf_counter()
        finally:
            await storage.close()  # waits for the files to be freed
        freed = time.perf_counter()
    return published - started, discarded - published, freed - published


def main() -> int:
    files = int(next((a for a in sys.argv[1:] if a.isdigit()), "10000"))
    fsync = "--fsync" in sys.argv
    publish, discard, freed = asyncio.run(measure(files, fsync=fsync))
    print(
        f"{files} files, FSYNC={str(fsync).lower()}: publish {publish:.2f} s, discard "
        f"{discard:.2f} s (the answer waits this long), all freed after {freed:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
