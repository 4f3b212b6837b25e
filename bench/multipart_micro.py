"""Micro-benchmark: clustr_aio's MultipartStream vs aiohttp's MultipartReader, in memory.

Run: ``.venv/bin/python bench/multipart_micro.py [--repeat N] [--quick]``

Each body is cut into 256 KiB chunks up front (what ``request.content.readany`` typically hands
over on a fast link), then parsed part by part with every body byte pulled through the reader and
dropped. aiohttp's reader gets a real ``aiohttp.StreamReader`` fed with the same chunk objects
before the clock starts (so its feeding is not counted); it is driven with ``read_chunk(size)``
for a 256 KiB and a 1 MiB size. Throughput is body bytes / best parse time of ``--repeat``
runs, in MB/s (10^6 bytes). Case (c) is a worst case for any delimiter search, shown to check
that CRLF-dense data does not slow the scanner down more than it does aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import BodyPartReader, MultipartReader

from clustr_aio.compat import fed_stream_reader
from clustr_aio.ingest.multipart import MultipartStream

BOUNDARY = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
FEED_CHUNK = 256 * 1024
KiB, MiB = 1024, 1024 * 1024


def make_body(part_sizes: list[int], filler: bytes) -> bytes:
    """A multipart/form-data body with one ``files`` part per size, cut from ``filler``."""
    out = bytearray()
    for i, size in enumerate(part_sizes):
        out += b"--" + BOUNDARY + b"\r\n"
        out += f'Content-Disposition: form-data; name="files"; filename="f{i}.bin"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n"
        out += filler[:size] if size <= len(filler) else (filler * (size // len(filler) + 1))[:size]
        out += b"\r\n"
    out += b"--" + BOUNDARY + b"--\r\n"
    return bytes(out)


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


Runner = Callable[[list[bytes]], Coroutine[Any, Any, tuple[int, float]]]
"""Parses a body given as chunks; returns (body bytes seen, seconds spent parsing)."""


async def run_scanner(chunks: list[bytes]) -> tuple[int, float]:
    """Parse with MultipartStream."""
    feed = iter(chunks)

    async def read() -> bytes:
        return next(feed, b"")

    start = time.perf_counter()
    stream = MultipartStream(read, BOUNDARY)
    total = 0
    while await stream.next_part() is not None:
        while piece := await stream.read_chunk():
            total += len(piece)
    return total, time.perf_counter() - start


def aiohttp_runner(read_size: int) -> Runner:
    """A runner for aiohttp's MultipartReader, reading parts with read_chunk(read_size)."""

    async def run(chunks: list[bytes]) -> tuple[int, float]:
        content = fed_stream_reader(chunks)  # not timed: in a server the protocol does this
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
        start = time.perf_counter()
        reader = MultipartReader(headers, content)
        total = 0
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            while piece := await part.read_chunk(read_size):
                total += len(piece)
        return total, time.perf_counter() - start

    return run


def best_mb_s(run: Runner, chunks: list[bytes], expected: int, repeat: int) -> float:
    """Throughput of the best of ``repeat`` runs, in MB/s of body (chunks) bytes."""
    best = float("inf")
    for _ in range(repeat):
        got, elapsed = asyncio.run(run(chunks))
        if got != expected:
            raise SystemExit(f"parsed {got} part bytes, expected {expected}")
        best = min(best, elapsed)
    return sum(len(c) for c in chunks) / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; best is kept")
    parser.add_argument("--quick", action="store_true", help="1/8 of the sizes (smoke test)")
    args = parser.parse_args()
    scale = 8 if args.quick else 1

    filler = os.urandom(4 * MiB)  # incompressible, with the odd CR/LF, like image data
    # Worst case for a delimiter search: CRLFs everywhere and a near-delimiter every 170 bytes.
    crlf_dense = b"\r\n--" + BOUNDARY[:-1] + b"\r\n" * 64
    cases = [
        ("(a) 1 part x 256 MiB", [256 * MiB // scale], filler),
        ("(b) 500 parts x 500 KB", [500_000] * (500 // scale), filler),
        ("(c) 1 part x 64 MiB CRLF-dense", [64 * MiB // scale], crlf_dense),
    ]
    readers: list[tuple[str, Runner]] = [
        ("MultipartStream", run_scanner),
        ("aiohttp rc=256K", aiohttp_runner(256 * KiB)),
        ("aiohttp rc=1M", aiohttp_runner(MiB)),
    ]

    print(f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, body fed in ", end="")
    print(f"{FEED_CHUNK // KiB} KiB chunks, best of {args.repeat}, MB/s (10^6 bytes/s)")
    columns = " ".join(f"{name:>16}" for name, _ in readers)
    print(f"{'case':34}{columns} {'vs best aiohttp':>16}")
    for label, sizes, fill in cases:
        chunks = split(make_body(sizes, fill), FEED_CHUNK)
        rates = [best_mb_s(run, chunks, sum(sizes), args.repeat) for _, run in readers]
        cells = " ".join(f"{rate:>16,.0f}" for rate in rates)
        print(f"{label:34}{cells} {rates[0] / max(rates[1:]):>15.1f}x", flush=True)


if __name__ == "__main__":
    main()
