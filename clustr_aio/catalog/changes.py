"""A number that every process of the host reads without a system call, and that tells whether
the API keys may have changed since it was last read: the SQLite catalog's revocations change
it, and a worker's cache of the keys it verified holds only while the number is the one it
read before looking them up (:class:`~clustr_aio.auth.keys.KeyRing`). So a key revoked by any
process, the CLI included, is refused by every worker from its next request on, while a key
in use costs no query per request.

The thumbnail cache keeps one of its own for removals (:mod:`clustr_aio.images.thumbnails`),
under which workers keep thumbnails' bytes in memory.

It lives in a small memory-mapped file beside the catalog's own file: on the same host as
every process that opens that catalog, as SQLite's WAL mode requires of them anyway. Like the
catalog's file, it must not be deleted while processes have it open.

A change is a sequence lock. Under an exclusive ``flock`` (changes one at a time, in any
process), the number is made odd before the keys change and even again once the change is
committed; an odd number means "changing: cache nothing". A process killed in between leaves
the number odd and the lock free: caching stops (each request asks the catalog: right, only
slower) until the next change, or the next process to open the file, makes it even. A new
file starts at a random even number, so a file made afresh never repeats a number that a
process may have cached keys under.
"""

from __future__ import annotations

import contextlib
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from clustr_aio.runtime.shared_map import SharedMap, locked

__all__ = ["ChangeCounter"]

_HEADER: Final = b"clustr-changes-1"
_VALUE: Final = struct.Struct("=Q")


class ChangeCounter:
    """The counter in ``path`` (created if missing). Open once per process; :meth:`close` it."""

    def __init__(self, path: Path) -> None:
        start = _VALUE.pack(secrets.randbits(62) * 2)
        self._shared = SharedMap(path, _HEADER, len(_HEADER) + _VALUE.size, start)
        self._map = self._shared.map
        with locked(self._shared.fd):
            if self._read() % 2:  # a change whose process died half-way: it is over
                self._write(self._read() + 1)

    def close(self) -> None:
        self._shared.close()

    def stable(self) -> int | None:
        """The number now, or None while a change is under way (cache nothing then)."""
        value = self._read()
        return None if value % 2 else value

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around a change: commit it inside, so that it is visible when the number moves on."""
        with locked(self._shared.fd):
            value = self._read()
            self._write(value + 1 if value % 2 == 0 else value + 2)
            try:
                yield
            finally:
                self._write(self._read() + 1)

    def _read(self) -> int:
        value: int = _VALUE.unpack_from(self._map, len(_HEADER))[0]
        return value

    def _write(self, value: int) -> None:
        _VALUE.pack_into(self._map, len(_HEADER), value % 2**64)
