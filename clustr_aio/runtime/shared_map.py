"""A small file that every process of the host maps into memory (``MAP_SHARED``), for state they
share and read without a system call: the rate limits' buckets, the catalog's key changes. It
is opened under an exclusive ``flock``, and made afresh when it is not the layout the caller
expects (another version's, or a first start torn half-way)."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SharedMap", "locked"]


class SharedMap:
    """``path`` mapped, ``size`` bytes starting with ``header`` (followed, in a new file, by
    ``initial``, else zeros). Open once per process, after any fork; :meth:`close` it."""

    def __init__(self, path: Path, header: bytes, size: int, initial: bytes = b"") -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with locked(fd):
                if os.fstat(fd).st_size != size or os.pread(fd, len(header), 0) != header:
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                    os.pwrite(fd, header + initial, 0)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@contextlib.contextmanager
def locked(fd: int) -> Iterator[None]:
    """An exclusive ``flock`` on ``fd``, for the time of the block (one process at a time)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
