"""Files a real client uploads: valid images of any size, made on the spot.

A PNG whose one IDAT chunk holds random bytes passes every check the upload makes (magic bytes,
chunk structure and CRCs; image data is never decoded) and has no metadata to strip, so what is
stored must be byte-identical to what was sent.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(size: int, *, seed: int = 0) -> bytes:
    """A PNG of exactly ``size`` bytes (at least 57)."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    tail = _chunk(b"IEND", b"")
    payload = size - len(head) - len(tail) - 12
    assert payload >= 0, "too small for a PNG"
    data = os.urandom(payload) if seed == 0 else (bytes([seed % 256]) * payload)
    return head + _chunk(b"IDAT", data) + tail


def write_png(path: Path, size: int) -> Path:
    path.write_bytes(png_bytes(size))
    return path
