"""A bounded, seeded fuzz run of the multipart reader, through the whole upload path of the
production runner: valid bodies, mutated (truncated, bytes flipped or inserted, boundaries
doubled or broken, odd part headers and names, chunked or not). Whatever the body, the answer
is a 200 or a 4xx JSON error, nothing is logged at ERROR or with a traceback, and nothing is
left in .incoming. The seed is fixed, so a failure is reproducible: the case number says which
mutations it took (see ``mutate``)."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import JPEG, PNG, WEBP, Client, temp_files
from tests.http.helpers import BOUNDARY, Part, multipart_body, multipart_headers

CASES = 2500
SEED = 20261201

NAMES = [
    "a.jpg",
    "b.png",
    "c.webp",
    "UPPER.JPG",
    "no-extension",
    ".jpg",
    "..png",
    "a/b/c.jpg",
    "C:\\\\x\\\\y.jpg",
    "nul\x00.jpg",
    "crlf\r\n.jpg",
    "ünïcode-照片.png",
    "x" * 300 + ".jpg",
    "semi;colon.jpg",
    'quote".jpg',
    "",
    "tab\t.png",
    "dot.",
    "a.exe",
    "a.jpg.exe",
]
DATA = [JPEG, PNG, WEBP, b"", b"\xff\xd8", JPEG[:20] + bytes(5000), PNG * 3, b"GIF89a" + bytes(90)]
CONTENT_TYPES = [None, "image/jpeg", "application/octet-stream", "multipart/mixed", "text/plain"]


def valid_body(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["files", "files", "files", "other", ""])
        parts.append(
            Part(
                rng.choice(DATA),
                filename=rng.choice([*NAMES, None]),
                name=name,
                content_type=rng.choice(CONTENT_TYPES),
            )
        )
    return multipart_body(*parts)


def mutate(rng: random.Random, body: bytes) -> bytes:
    """One to three random edits of ``body``."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(body) + 1)
        kind = rng.randrange(9)
        if kind == 0:  # truncate
            body = body[:at]
        elif kind == 1 and body:  # flip a byte
            at = min(at, len(body) - 1)
            body = body[:at] + bytes([body[at] ^ (1 << rng.randrange(8))]) + body[at + 1 :]
        elif kind == 2:  # insert random bytes
            body = body[:at] + rng.randbytes(rng.randint(1, 40)) + body[at:]
        elif kind == 3:  # insert a delimiter, or a closing one
            delimiter = rng.choice([b"\r\n--", b"--", b"\n--", b"\r\n--\r\n--"]) + BOUNDARY.encode()
            body = body[:at] + delimiter + rng.choice([b"", b"--", b"\r\n", b" \t\r\n"]) + body[at:]
        elif kind == 4:  # delete a span
            body = body[:at] + body[at + rng.randint(1, 64) :]
        elif kind == 5:  # an odd part header
            header = rng.choice(
                [
                    b"Content-Disposition: attachment\r\n",
                    b"Content-Type: multipart/form-data; boundary=x\r\n",
                    b"Bad Header\r\n",
                    b"X-Long: " + b"a" * rng.randint(1, 20000) + b"\r\n",
                    b" folded continuation\r\n",
                    b'Content-Disposition: form-data; name="files"; '
                    b"filename*=UTF-8''%e2%82%ac.jpg\r\n",
                ]
            )
            body = body[:at] + header + body[at:]
        elif kind == 6:  # CRLF to LF, or the other way round
            body = body.replace(b"\r\n", b"\n", 1) if rng.random() < 0.5 else body + b"\r\n"
        elif kind == 7:  # repeat a span
            body = body[:at] + body[at : at + rng.randint(1, 200)] * rng.randint(2, 5) + body[at:]
        else:  # all the boundaries are a different one
            body = body.replace(BOUNDARY.encode(), BOUNDARY.encode()[:-1] + b"X")
    return body


def content_type(rng: random.Random) -> str:
    return rng.choice(
        [
            multipart_headers()["Content-Type"],
            multipart_headers()["Content-Type"],
            multipart_headers()["Content-Type"],
            f'multipart/form-data; boundary="{BOUNDARY}"',
            "multipart/form-data",
            "multipart/form-data; boundary=",
            f"multipart/form-data; boundary={BOUNDARY}; boundary=other",
            "application/x-www-form-urlencoded",
            f"multipart/form-data; boundary={'b' * 71}",
        ]
    )


@pytest.fixture
def client(production_client: Client) -> Client:
    return production_client


async def test_fuzzed_multipart_bodies_get_200_or_4xx_and_leave_nothing_behind(
    client: Client, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.INFO):
        for case in range(CASES):
            body = valid_body(rng)
            if rng.random() < 0.75:
                body = mutate(rng, body)
            headers = {"Content-Type": content_type(rng)}
            # Half of them chunked (aiohttp's client sends a generator's bytes chunked).
            data: object = body if rng.random() < 0.5 else _as_chunks(body, rng)
            response = await client.post("/api/upload", data=data, headers=headers)
            text = await response.text()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            assert response.status == 200 or 400 <= response.status < 500, (case, text)
            assert response.content_type == "application/json", (case, text)
            assert "Traceback" not in text, case
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], problems[:3]
    assert temp_files(upload_dir) == []
    assert statuses.get(200, 0) > 0  # the run did exercise success too
    print("statuses:", dict(sorted(statuses.items())))
    assert len(statuses) >= 4, statuses


async def _as_chunks(body: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    at = 0
    while at < len(body):
        size = rng.randint(1, 4096)
        yield body[at : at + size]
        at += size
