"""Giving memory back to the system once a crowd of connections has gone, or the server has
gone quiet after work.

glibc's ``free`` keeps most of what a burst of reads allocated: 300 stalled uploads took the
process from 51 to 115 MiB, still held after they closed. ``malloc_trim(0)`` returns the free
pages (measured: back to 74 MiB a second and a half after they closed). It costs a few
milliseconds for a heap that size, so it is called only a second after the last close of

- a fall of the open connections to half a peak of at least :data:`TRIM_AFTER_PEAK`, once per
  fall;
- the last open connection, when no connection has opened in the second since and the process
  has grown by :data:`TRIM_GROWTH` since it last trimmed: 16 uploads of a 500 KB photo at a
  time (bench C) left the main heap 9 MiB larger than before, and every later burst started
  from there (``make bench``'s later scenarios on the same server peaked at 65-67 MiB);
  trimmed, it went back to 10 MiB. (glibc's own count of free bytes, ``mallinfo2``, cannot
  tell: it counts what a trim gave back as free still.)
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from typing import Final

__all__ = [
    "TRIM_AFTER_PEAK",
    "TRIM_GROWTH",
    "TrimAfterLoad",
    "fix_mmap_threshold",
    "malloc_trim",
    "resident_bytes",
]

log = logging.getLogger("clustr_aio")

TRIM_AFTER_PEAK: Final = 64
TRIM_GROWTH: Final = 2 * 1024 * 1024
"""Growth of the resident set since the last trim above which a server left without
connections trims."""
_DELAY_SECONDS: Final = 1.0


@functools.cache
def _malloc_trim_function() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


def malloc_trim() -> bool:
    """``malloc_trim(0)`` where the C library has it; whether it did."""
    trim = _malloc_trim_function()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """The process's resident set (``/proc/self/statm``); None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * _PAGE_SIZE


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


_M_MMAP_THRESHOLD: Final = -3
"""``mallopt``'s parameter number (glibc's malloc.h)."""


@functools.cache
def _mallopt_function() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        mallopt: Callable[[int, int], int] = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    return mallopt


def fix_mmap_threshold(size: int) -> bool:
    """Have glibc map every allocation of ``size`` bytes or more on its own, and unmap it when
    freed, from now on; whether it did. glibc's threshold is dynamic by default: once a mapped
    block of 16 MiB is freed, later ones come from the heap, whose free holes stay resident (a
    process that sends 16 MiB parts one after another held a part more than it had live)."""
    mallopt = _mallopt_function()
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, size) == 1


class TrimAfterLoad:
    """Told the number of open connections as it changes; trims after a fall (see above), a
    second after the last close of the fall, when what those connections held is freed."""

    __slots__ = ("_count", "_handle", "_loop", "_peak", "_trimmed_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._peak = 0
        self._count = 0
        self._handle: asyncio.TimerHandle | None = None
        self._trimmed_at: int | None = None
        """The resident set right after the last trim."""

    def opened(self, count: int) -> None:
        self._count = count
        self._peak = max(self._peak, count)

    def closed(self, count: int) -> None:
        self._count = count
        fell = self._peak >= TRIM_AFTER_PEAK and count <= self._peak // 2
        if self._handle is None and not fell and count:
            return
        if self._handle is not None:
            self._handle.cancel()  # the fall goes on: wait for its end
        self._handle = self._loop.call_later(_DELAY_SECONDS, self._trim, fell)

    def _trim(self, fell: bool) -> None:
        self._handle = None
        self._peak = self._count
        if not fell and self._count:
            # Not quiet any more: a connection opened during the wait (its request may be on
            # the loop now). Its close schedules the trim again.
            return
        if not fell and self._trimmed_at is not None:  # quiet: only if it grew since
            resident = resident_bytes()
            if resident is not None and resident < self._trimmed_at + TRIM_GROWTH:
                return
        if malloc_trim():
            self._trimmed_at = resident_bytes()
            log.debug("returned free memory to the system (malloc_trim)")
