"""Giving memory back (clustr_aio/runtime/memory.py), measured on this process's own heap: what
a burst left free is counted by ``free_heap_bytes`` and handed back a second after the last
connection closed, not while one is open."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clustr_aio.runtime.memory import TRIM_FREE_BYTES, TrimAfterLoad, free_heap_bytes

MiB = 1024 * 1024
_PIECE = 8 * 1024  # from glibc's heap (below its mmap threshold), not Python's small-object one


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def burst(size: int) -> bytes:
    """Allocate ``size`` bytes in heap-sized pieces and free them, but for one allocated after
    them, which pins the heap's top: glibc cannot shrink it by itself, the pages stay resident.
    Returns the pin (keep it alive)."""
    pieces = [b"x" * _PIECE for _ in range(size // _PIECE)]  # written: resident
    pin = b"y" * _PIECE
    del pieces
    return pin


def test_free_heap_bytes_counts_what_a_burst_left() -> None:
    before = free_heap_bytes()
    assert before is not None  # glibc 2.33 or later (Debian 12: 2.36)
    pin = burst(32 * MiB)
    after = free_heap_bytes()
    assert after is not None
    assert after - before >= 16 * MiB
    assert pin


async def test_the_last_close_gives_back_what_a_burst_left() -> None:
    trim = TrimAfterLoad(asyncio.get_running_loop())
    trim.opened(1)
    trim.opened(2)
    pin = burst(48 * MiB)
    free = free_heap_bytes()
    assert free is not None
    assert free >= TRIM_FREE_BYTES
    held = rss()
    trim.closed(1)  # a connection is still open: nothing happens
    await asyncio.sleep(1.3)
    assert rss() > held - 8 * MiB
    trim.closed(0)  # the last one: a second later, the free pages go back
    await asyncio.sleep(1.3)
    assert rss() < held - 24 * MiB, (held // MiB, rss() // MiB)
    assert pin
