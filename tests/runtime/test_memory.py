"""Giving memory back (clustr_aio/runtime/memory.py), measured on this process's own heap: what
a burst left is handed back a second after the last connection closed, not while one is open,
and again after the next burst; not when a connection opened during that second."""

from __future__ import annotations

import asyncio

from clustr_aio.runtime.memory import TrimAfterLoad, resident_bytes

MiB = 1024 * 1024
_PIECE = 8 * 1024  # from glibc's heap (below its mmap threshold), not Python's small-object one


def rss() -> int:
    resident = resident_bytes()
    assert resident is not None  # Linux
    return resident


def burst(size: int) -> bytes:
    """Allocate ``size`` bytes in heap-sized pieces and free them, but for one allocated after
    them, which pins the heap's top: glibc cannot shrink it by itself, the pages stay resident.
    Returns the pin (keep it alive)."""
    pieces = [b"x" * _PIECE for _ in range(size // _PIECE)]  # written: resident
    pin = b"y" * _PIECE
    del pieces
    return pin


async def test_the_last_close_gives_back_what_each_burst_left() -> None:
    trim = TrimAfterLoad(asyncio.get_running_loop())
    trim.opened(1)
    trim.opened(2)
    pins = [burst(48 * MiB)]
    held = rss()
    trim.closed(1)  # a connection is still open: nothing happens
    await asyncio.sleep(1.3)
    assert rss() > held - 8 * MiB
    trim.closed(0)  # the last one: a second later, the free pages go back
    await asyncio.sleep(1.3)
    assert rss() < held - 24 * MiB, (held // MiB, rss() // MiB)
    # The next burst grows the process by more than TRIM_GROWTH: given back again too.
    trim.opened(1)
    pins.append(burst(48 * MiB))
    held = rss()
    trim.closed(0)
    await asyncio.sleep(1.3)
    assert rss() < held - 24 * MiB, (held // MiB, rss() // MiB)
    assert all(pins)


async def test_a_connection_opened_during_the_wait_puts_the_trim_off() -> None:
    trim = TrimAfterLoad(asyncio.get_running_loop())
    trim.opened(1)
    pin = burst(48 * MiB)
    held = rss()
    trim.closed(0)
    await asyncio.sleep(0.5)
    trim.opened(1)  # before the second is up: the server is not quiet, nothing happens
    await asyncio.sleep(1.3)
    assert rss() > held - 8 * MiB, (held // MiB, rss() // MiB)
    trim.closed(0)  # quiet again: a second later, the free pages go back
    await asyncio.sleep(1.3)
    assert rss() < held - 24 * MiB, (held // MiB, rss() // MiB)
    assert pin
