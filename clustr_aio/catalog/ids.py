"""Record ids: UUIDv7 (RFC 9562), written the canonical way (36 characters, lower-case hex).

Opaque to clients, URL-safe, and time-sortable: the first 48 bits are the Unix time in
milliseconds, so sorting ids as text sorts records by creation, and a keyset page over the id
alone is stable. Within one millisecond a process counts up in the 12 ``rand_a`` bits (RFC 9562
§6.2, method 1), so the files of one upload sort in the order they arrived; the 62 random bits
keep ids of different processes apart. Python 3.14 has ``uuid.uuid7``; 3.11 does not, and the
dozen lines here save a dependency.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime
from typing import Final

__all__ = ["id_time", "is_id", "new_id"]

_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_lock = threading.Lock()
_last = [0, 0]  # the last (milliseconds, counter) handed out by this process


def new_id(at_ms: int | None = None) -> str:
    """A new id; ``at_ms`` (Unix milliseconds) dates it, for a file found on disk, say."""
    randomness = int.from_bytes(os.urandom(10))  # one getrandom call for both random fields
    with _lock:
        ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
        if at_ms is None and ms <= _last[0]:
            ms, counter = _last[0], _last[1] + 1
            if counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms, counter = ms + 1, 0
        else:
            counter = (randomness >> 64) & 0x3FF  # leaves room to count up
        if at_ms is None:
            _last[0], _last[1] = ms, counter
    rand_b = randomness & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def is_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def id_time(record_id: str) -> datetime:
    """When the id was made, to the millisecond, in UTC."""
    ms = int(record_id[:8] + record_id[9:13], 16)
    return datetime.fromtimestamp(ms / 1000, UTC)
