"""Plain request heads read from raw bytes (clustr_aio/web/plain_head.py): whatever it
recognises, aiohttp's own (llhttp) parser reads as the same request, to the byte where it
ends; what it must leave to that parser, it does. Checked on written cases and on thousands of
seeded mutations of a browser's head."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import EMPTY_PAYLOAD, HttpVersion11
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser

from clustr_aio.web.hot_thumbnails import ANSWERABLE
from clustr_aio.web.plain_head import MAX_PLAIN_HEAD, PlainHead, plain_head

NAMES = frozenset(name.encode() for name in ANSWERABLE)
TARGET = "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail?size=256&format=webp"
BROWSER = (
    f"GET {TARGET} HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    "Accept: image/avif,image/webp,*/*;q=0.5\r\nAccept-Language: en-GB,en;q=0.5\r\n"
    'Connection: keep-alive\r\nIf-None-Match: "0123abcd"\r\nX-Request-ID: r-1\r\n\r\n'
).encode()


def parsed(data: bytes) -> list[tuple[object, object]]:
    """What aiohttp's parser makes of ``data``: its messages (an error raises)."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        messages, upgraded, tail = parser.feed_data(data)
        assert not upgraded
        assert not tail
        return list(messages)
    finally:
        loop.close()


def assert_read_alike(data: bytes, head: PlainHead) -> None:
    """``head`` is the request aiohttp's parser reads from ``data[:head.end]``."""
    ((message, payload),) = parsed(data[: head.end])
    assert payload is EMPTY_PAYLOAD
    assert message.method == "GET"  # type: ignore[attr-defined]
    assert message.version == HttpVersion11  # type: ignore[attr-defined]
    assert message.path == head.target  # type: ignore[attr-defined]
    assert not message.should_close  # type: ignore[attr-defined]
    assert not message.upgrade  # type: ignore[attr-defined]
    headers = message.headers  # type: ignore[attr-defined]
    assert len(headers) == len(head.headers)
    for name, value in head.headers.items():
        assert headers.getall(name.decode()) == [value.decode()], name


def test_a_browsers_head_is_read_as_aiohttp_reads_it() -> None:
    head = plain_head(BROWSER, 0, NAMES)
    assert head is not None
    assert head.end == len(BROWSER)
    assert head.target == TARGET
    assert head.headers[b"accept"] == b"image/avif,image/webp,*/*;q=0.5"
    assert head.headers[b"if-none-match"] == b'"0123abcd"'
    assert_read_alike(BROWSER, head)


def test_heads_one_after_another_and_a_partial_one() -> None:
    data = BROWSER + BROWSER + BROWSER[:40]
    first = plain_head(data, 0, NAMES)
    assert first is not None
    assert first.end == len(BROWSER)
    second = plain_head(data, first.end, NAMES)
    assert second is not None
    assert second.end == 2 * len(BROWSER)
    assert plain_head(data, second.end, NAMES) is None  # incomplete: the parser's


def test_values_lose_their_surrounding_spaces_and_tabs_as_in_aiohttp() -> None:
    data = f"GET {TARGET} HTTP/1.1\r\nAccept: \t image/webp ,  image/* \t\r\nHost:x\r\n\r\n"
    head = plain_head(data.encode(), 0, NAMES)
    assert head is not None
    assert head.headers == {b"accept": b"image/webp ,  image/*", b"host": b"x"}
    assert_read_alike(data.encode(), head)


@pytest.mark.parametrize(
    "data",
    [
        f"HEAD {TARGET} HTTP/1.1\r\n\r\n",
        f"POST {TARGET} HTTP/1.1\r\n\r\n",
        f"get {TARGET} HTTP/1.1\r\n\r\n",
        f"GET {TARGET} HTTP/1.0\r\n\r\n",
        f"GET {TARGET} HTTP/1.1 \r\n\r\n",
        f"GET  {TARGET} HTTP/1.1\r\n\r\n",
        f"\r\nGET {TARGET} HTTP/1.1\r\n\r\n",  # llhttp skips it; not plain
        f"GET http://x{TARGET} HTTP/1.1\r\n\r\n",
        "GET * HTTP/1.1\r\n\r\n",
        f"GET {TARGET}#x HTTP/1.1\r\n\r\n",
        f"GET {TARGET}&a=%41 HTTP/1.1\r\n\r\n",
        f"GET {TARGET}&a=b+c HTTP/1.1\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nOrigin: http://a\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost : a\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\n Host: a\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost a\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\nHost: a\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\nAccept: b\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: caf\u00e9\r\n\r\n",
        f"GET {TARGET} HTTP/1.1\r\nHost: a\r\n",
        f"GET {TARGET} HTTP/1.1\r\nUser-Agent: {'x' * MAX_PLAIN_HEAD}\r\n\r\n",
    ],
)
def test_what_is_not_plain_is_left_to_the_parser(data: str) -> None:
    assert plain_head(data.encode("utf-8"), 0, NAMES) is None


def test_seeded_mutations_are_read_alike_or_left_alone() -> None:
    """Bytes inserted, replaced and removed at random in a browser's head: each time this
    recognises a head, aiohttp's parser reads the same request from the same bytes."""
    rng = random.Random(12)
    alphabet = b"\r\n\t :;,%?#&=/.\x00\x7f\x80\xffaAzZ09-_~\"'"
    read = left = 0
    for _ in range(4000):
        data = bytearray(BROWSER)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) - 4)  # the final blank line stays
            kind = rng.randrange(3)
            byte = alphabet[rng.randrange(len(alphabet))]
            if kind == 0:
                data.insert(at, byte)
            elif kind == 1:
                data[at] = byte
            else:
                del data[at]
        head = plain_head(bytes(data), 0, NAMES)
        if head is None:
            left += 1
            continue
        read += 1
        assert_read_alike(bytes(data), head)
    assert read > 500, (read, left)  # both kinds were tried, many times
    assert left > 500, (read, left)
