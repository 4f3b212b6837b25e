"""Tests for the streaming multipart/form-data scanner (clustr_aio.ingest.multipart)."""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from aiohttp import (
    BodyPartReader,
    MultipartReader,
    content_disposition_filename,
    parse_content_disposition,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustr_aio.compat import fed_stream_reader
from clustr_aio.domain.errors import ClientDisconnected, MalformedUpload, NoFilesUploaded
from clustr_aio.ingest.multipart import (
    MultipartStream,
    PartInfo,
    Window,
    _disposition_names,
    parse_boundary,
)
from clustr_aio.runtime.body_reader import BlockPool

BOUNDARY = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
DELIM = b"\r\n--" + BOUNDARY


# --------------------------------------------------------------------------- helpers


class Feed:
    """A fake ``read``: serves ``body`` in pieces of the given sizes (cycled), then b""."""

    def __init__(self, body: bytes, sizes: Iterable[int] = (1 << 20,)) -> None:
        self.body = body
        self.sizes = itertools.cycle(sizes)
        self.pos = 0
        self.returned: list[bytes] = []

    async def __call__(self) -> bytes:
        n = next(self.sizes)
        chunk = self.body[self.pos : self.pos + n]
        self.pos += len(chunk)
        self.returned.append(chunk)
        return chunk

    @property
    def exhausted(self) -> bool:
        return self.pos == len(self.body)


class ChunksFeed(Feed):
    """A Feed that returns exactly these bytes objects, in order."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        super().__init__(b"".join(chunks))
        self.chunks = list(chunks)

    async def __call__(self) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else b""
        self.pos += len(chunk)
        self.returned.append(chunk)
        return chunk


def form_part(
    data: bytes,
    name: str = "files",
    filename: str | None = "a.jpg",
    content_type: str | None = "image/jpeg",
) -> bytes:
    """One encoded part (headers, blank line, body), as a browser would send it."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data


def encode(
    *parts: bytes,
    boundary: bytes = BOUNDARY,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """A multipart body from already encoded parts (see form_part)."""
    out = preamble + b"\r\n" if preamble else b""
    for part in parts:
        out += b"--" + boundary + b"\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--" + epilogue


async def collect(
    read: Feed, boundary: bytes = BOUNDARY, **kwargs: int
) -> list[tuple[PartInfo, bytes]]:
    """Every part with its whole body, checking the read_chunk contract along the way."""
    stream = MultipartStream(read, boundary, **kwargs)
    out: list[tuple[PartInfo, bytes]] = []
    while (info := await stream.next_part()) is not None:
        pieces: list[bytes] = []
        while piece := await stream.read_chunk():  # an empty piece means the end: see asserts
            pieces.append(bytes(piece))
        assert await stream.read_chunk() == b""  # stays ended
        out.append((info, b"".join(pieces)))
    assert await stream.next_part() is None
    assert await stream.read_chunk() == b""
    assert read.exhausted  # the epilogue was drained
    return out


def info(
    name: str | None = "files", filename: str | None = "a.jpg", ctype: str | None = "image/jpeg"
) -> PartInfo:
    return PartInfo(name=name, filename=filename, content_type=ctype)


# --------------------------------------------------------------------------- parse_boundary


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ("multipart/form-data;boundary=abc", b"abc"),
        ("Multipart/Form-Data; BOUNDARY=abc", b"abc"),
        ('multipart/form-data; boundary="abc"', b"abc"),
        ('multipart/form-data; boundary="a b:c=d?e"', b"a b:c=d?e"),
        ('multipart/form-data; boundary="a\\(b"', b"a(b"),
        ('multipart/form-data; x="q; boundary=evil"; boundary=good', b"good"),
        ("multipart/form-data; charset=utf-8; boundary=abc ; x=y", b"abc"),
        (f"multipart/form-data; boundary={BOUNDARY.decode()}", BOUNDARY),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
    ],
)
def test_parse_boundary_accepts(content_type: str, expected: bytes) -> None:
    assert parse_boundary(content_type) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "text/plain; boundary=abc",
        "multipart/mixed; boundary=abc",
        "application/x-www-form-urlencoded",
        "multipart/form-datax; boundary=abc",
    ],
)
def test_parse_boundary_not_multipart_form_data_is_406(content_type: str | None) -> None:
    with pytest.raises(NoFilesUploaded):
        parse_boundary(content_type)


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; charset=utf-8", "no boundary"),
        ("multipart/form-data; boundary=", "empty"),
        ('multipart/form-data; boundary=""', "empty"),
        ("multipart/form-data; boundary=" + "x" * 71, "longer than 70"),
        ("multipart/form-data; boundary=abc@def", "not allowed"),
        ("multipart/form-data; boundary=caf\u00e9", "not allowed"),
        ("multipart/form-data; boundary=abc\udc80", "not allowed"),  # surrogate-escaped byte
        ("multipart/form-data; boundary=" + "\u00e9" * 30, "not allowed"),
        ('multipart/form-data; boundary="abc "', "not allowed"),
        ('multipart/form-data; boundary="abc', "not allowed"),
        ("multipart/form-data; boundary=a; boundary=b", "conflicting"),
    ],
)
def test_parse_boundary_bad_boundary_is_400(content_type: str, message: str) -> None:
    with pytest.raises(MalformedUpload, match=message):
        parse_boundary(content_type)


def test_constructor_rejects_invalid_boundary() -> None:
    with pytest.raises(ValueError, match="boundary"):
        MultipartStream(Feed(b""), b"bad\r\nboundary")


# --------------------------------------------------------------------------- well-formed bodies


async def test_single_part() -> None:
    body = encode(form_part(b"\xff\xd8\xff\xe0 jpeg bytes"))
    assert await collect(Feed(body)) == [(info(), b"\xff\xd8\xff\xe0 jpeg bytes")]


async def test_many_parts() -> None:
    datas = [bytes([i % 256]) * (i * 37) for i in range(60)]
    body = encode(*(form_part(d, filename=f"f{i}.png") for i, d in enumerate(datas)))
    for sizes in ([1 << 20], [4096], [7, 1000, 3]):
        parts = await collect(Feed(body, sizes))
        assert [p.filename for p, _ in parts] == [f"f{i}.png" for i in range(60)]
        assert [d for _, d in parts] == datas


async def test_empty_part_body() -> None:
    body = encode(form_part(b""), form_part(b"x"), form_part(b""))
    assert [d for _, d in await collect(Feed(body))] == [b"", b"x", b""]


async def test_empty_filename_is_kept() -> None:
    body = encode(form_part(b"data", filename="", content_type="application/octet-stream"))
    assert await collect(Feed(body)) == [
        (info(filename="", ctype="application/octet-stream"), b"data")
    ]


async def test_non_file_fields() -> None:
    body = encode(
        form_part(b"hello", name="note", filename=None, content_type=None),
        form_part(b"img", name="files"),
    )
    assert await collect(Feed(body)) == [
        (info(name="note", filename=None, ctype=None), b"hello"),
        (info(), b"img"),
    ]


async def test_name_absent() -> None:
    body = encode(b"Content-Disposition: form-data\r\n\r\nx")
    assert await collect(Feed(body)) == [(info(name=None, filename=None, ctype=None), b"x")]


async def test_preamble_and_epilogue_are_ignored() -> None:
    preamble = b"This is the preamble.\r\n--" + BOUNDARY[:-1] + b"\r\n" + DELIM[:-1] + b"junk"
    epilogue = b"\r\n" + (b"The epilogue, with a " + DELIM + b" in it\r\n") * 1000
    body = encode(form_part(b"x"), preamble=preamble, epilogue=epilogue)
    for sizes in ([1 << 20], [1], [5, 3]):
        assert await collect(Feed(body, sizes)) == [(info(), b"x")]


async def test_only_closing_delimiter_means_no_parts() -> None:
    assert await collect(Feed(b"--" + BOUNDARY + b"--\r\n")) == []


async def test_closing_delimiter_with_crlf_and_without() -> None:
    body = encode(form_part(b"x"))
    assert await collect(Feed(body + b"\r\n")) == [(info(), b"x")]
    assert await collect(Feed(body)) == [(info(), b"x")]


async def test_transport_padding_after_delimiters() -> None:
    body = (
        b"--" + BOUNDARY + b" \t \r\n" + form_part(b"one") + DELIM + b"\t\r\n" + form_part(b"two")
        + DELIM + b"--  \r\n"
    )  # fmt: skip
    for sizes in ([1 << 20], [1], [2]):
        assert [d for _, d in await collect(Feed(body, sizes))] == [b"one", b"two"]


async def test_header_names_are_case_insensitive_and_values_trimmed() -> None:
    body = encode(b'content-disposition:form-data; name="f"\r\nCONTENT-TYPE:  text/plain \r\n\r\nx')
    assert await collect(Feed(body)) == [(info(name="f", filename=None, ctype="text/plain"), b"x")]


async def test_rfc2231_filename_is_preferred() -> None:
    head = b'Content-Disposition: form-data; name="files"; filename="fallback.jpg"; '
    head += b"filename*=UTF-8''%E2%82%AC%20rates.jpg\r\n"
    body = encode(head + b"\r\nx")
    assert (await collect(Feed(body)))[0][0].filename == "\u20ac rates.jpg"


async def test_raw_utf8_filename() -> None:
    body = encode(form_part(b"x", filename="caf\u00e9 \u65e5\u672c.jpg"))
    assert (await collect(Feed(body)))[0][0].filename == "caf\u00e9 \u65e5\u672c.jpg"


async def test_undecodable_filename_bytes_are_replaced() -> None:
    body = encode(b'Content-Disposition: form-data; name="files"; filename="a\xff.jpg"\r\n\r\nx')
    assert (await collect(Feed(body)))[0][0].filename == "a\ufffd.jpg"


async def test_delimiter_split_at_every_offset() -> None:
    body = encode(form_part(b"first\r\n-"), form_part(b"\r"), form_part(b""), preamble=b"pre")
    expected = await collect(Feed(body))
    assert [d for _, d in expected] == [b"first\r\n-", b"\r", b""]
    for split in range(1, len(body)):
        assert await collect(ChunksFeed([body[:split], body[split:]])) == expected, split
    assert await collect(Feed(body, [1])) == expected


TRICKY_DATA = [
    b"\r\n" * 5000,  # CRLF-dense
    b"\r\n--" * 2000,
    b"\r\r\n\n\r\n-\r\n--\r\n-",
    b"x--" + BOUNDARY + b"\n--" + BOUNDARY + b"--",  # boundary without the leading CRLF
    b"x\n--" + BOUNDARY + b"\r--" + BOUNDARY,  # half a CRLF
    DELIM[:-1],  # the delimiter minus its last byte, at the very end of the body
    DELIM[:-1] + b"X" + DELIM[:-1] + b"\r\n",
    b"\r" + DELIM[:-1],
    BOUNDARY,
    b"\r",
    b"-",
]


@pytest.mark.parametrize("data", TRICKY_DATA)
@pytest.mark.parametrize("sizes", [[1 << 20], [1], [2, 3, 5, 7], [len(DELIM) - 1], [len(DELIM)]])
async def test_tricky_body_data(data: bytes, sizes: list[int]) -> None:
    body = encode(form_part(data), form_part(data[::-1]), form_part(b"end"))
    parts = await collect(Feed(body, sizes))
    assert [d for _, d in parts] == [data, data[::-1], b"end"]


async def test_part_without_body_before_a_delimiter() -> None:
    # RFC 2046: body-part := MIME-part-headers [CRLF *OCTET], and the delimiter (CRLF "--"
    # boundary) may not occur in a part: so here the blank line's CRLF starts the next delimiter.
    body = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a"\r\n' + DELIM
        + b"\r\n" + form_part(b"x") + DELIM + b"--"
    )  # fmt: skip
    expected = [(info(name="a", filename=None, ctype=None), b""), (info(), b"x")]
    for sizes in ([1 << 20], [1], [len(DELIM) - 1]):
        assert await collect(Feed(body, sizes)) == expected
    assert await aiohttp_parse(body, BOUNDARY, 7) == expected


async def test_unread_and_partly_read_parts_are_skipped() -> None:
    body = encode(form_part(b"a" * 10_000), form_part(b"b" * 10_000), form_part(b"c"))
    stream = MultipartStream(Feed(body, [999]), BOUNDARY)
    assert await stream.next_part() == info()
    assert await stream.next_part() == info()
    piece = await stream.read_chunk()
    assert bytes(piece) == b"b" * len(piece)
    assert await stream.next_part() == info()
    assert await stream.read_chunk() == b"c"
    assert await stream.read_chunk() == b""
    assert await stream.next_part() is None


async def test_chunks_are_zero_copy_and_as_large_as_the_reads() -> None:
    payload = [bytes([i]) * 100_000 for i in range(1, 6)]
    # (The very first read is copied once, as the scanner looks at it through a leading CRLF.)
    head = b"\r\n" + form_part(b"first")
    feed = ChunksFeed([b"--" + BOUNDARY, head, *payload, DELIM + b"--"])
    stream = MultipartStream(feed, BOUNDARY)
    assert await stream.next_part() == info()
    pieces = []
    while piece := await stream.read_chunk():
        pieces.append(piece)
    # One piece per read, each the very object read returned: no copy, no re-chunking.
    assert isinstance(pieces[0], memoryview)
    assert pieces[0].obj is head
    assert bytes(pieces[0]) == b"first"
    assert len(pieces) == 1 + len(payload)
    assert all(got is sent for got, sent in zip(pieces[1:], payload, strict=True))


async def test_last_piece_is_a_view_of_the_read_chunk() -> None:
    feed = ChunksFeed([b"--" + BOUNDARY, b"\r\n" + form_part(b"x" * 1000) + DELIM + b"--"])
    stream = MultipartStream(feed, BOUNDARY)
    await stream.next_part()
    piece = await stream.read_chunk()
    assert isinstance(piece, memoryview)
    assert piece.obj is feed.returned[-1]
    assert bytes(piece) == b"x" * 1000


async def test_header_block_limit_is_exact() -> None:
    head = form_part(b"", filename="f" * 100)
    size = len(b"\r\n" + head)  # CRLF ending the boundary line through the blank line
    body = encode(head + b"x")
    for sizes in ([1 << 20], [1], [7]):
        assert len(await collect(Feed(body, sizes), max_header_bytes=size)) == 1
        with pytest.raises(MalformedUpload, match=f"part headers exceed {size - 1} bytes"):
            await collect(Feed(body, sizes), max_header_bytes=size - 1)


async def test_header_block_too_large_default_limit() -> None:
    body = encode(b"X-Junk: " + b"j" * 20_000 + b"\r\n" + form_part(b"x"))
    with pytest.raises(MalformedUpload, match="part headers exceed 16384 bytes"):
        await collect(Feed(body, [4096]))


async def test_endless_header_line_is_bounded() -> None:
    feed = Feed(b"--" + BOUNDARY + b"\r\nX: " + b"a" * 10_000_000, [65536])
    with pytest.raises(MalformedUpload, match="part headers exceed"):
        await collect(feed)
    assert feed.pos < 200_000


# --------------------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no multipart boundary"),
        (b"just some text\r\nwith lines\r\n", "no multipart boundary"),
        (b"x--" + BOUNDARY + b"\r\n" + form_part(b"x"), "no multipart boundary"),
        (b"--" + BOUNDARY[:-1] + b"\r\n" + form_part(b"x") + DELIM[:-1] + b"--", "no multip"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"x"), "before the closing boundary"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"x") + b"\r\n", "before the closing boundary"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"x") + DELIM, "before the closing boundary"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"x") + DELIM + b"-", "before the closing"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"x") + DELIM + b"\r\n", "inside part headers"),
        (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-da", "inside part headers"),
        (b"--" + BOUNDARY, "before the closing boundary"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b""), "before the closing boundary"),
        (b"--" + BOUNDARY + b"\r\n" + form_part(b"") + DELIM[:-1], "before the closing"),
        (b"--" + BOUNDARY + b"\r\n", "inside part headers"),
        (b"--" + BOUNDARY + b"X\r\n" + form_part(b"x") + DELIM + b"--", "unexpected data after"),
        (b"--" + BOUNDARY + b" x\r\n" + form_part(b"x") + DELIM + b"--", "unexpected data after"),
        (encode(form_part(b"x") + DELIM + b"Z\r\n"), "unexpected data after"),
        (encode(b"\r\nx"), "missing Content-Disposition: form-data"),
        (encode(b"Content-Type: image/png\r\n\r\nx"), "missing Content-Disposition: form-data"),
        (encode(b'Content-Disposition: attachment; filename="a"\r\n\r\nx'), "form-data"),
        (encode(b"Content-Disposition: form-data; name\r\n\r\nx"), "malformed Content-Disp"),
        (
            encode(form_part(b"x", content_type="multipart/mixed; boundary=inner")),
            "nested multipart parts are not supported",
        ),
        (
            encode(form_part(b"x", content_type="Multipart/Form-Data; boundary=inner")),
            "nested multipart",
        ),
        (encode(b"NoColonHere\r\n" + form_part(b"x")), "malformed part header line"),
        (encode(b" folded: line\r\n" + form_part(b"x")), "malformed part header line"),
        (encode(b"X-Bad: a\rb\r\n" + form_part(b"x")), "malformed part header line"),
        (encode(b"X-Bad: a\nb\r\n" + form_part(b"x")), "malformed part header line"),
        (encode(b"X-Bad: a\x00b\r\n" + form_part(b"x")), "malformed part header line"),
        (
            encode(b'Content-Disposition: form-data; name="a"\r\n' + form_part(b"x")),
            "more than one Content-Disposition",
        ),
        (
            encode(b"Content-Type: text/plain\r\n" + form_part(b"x")),
            "more than one Content-Type",
        ),
    ],
)
@pytest.mark.parametrize("sizes", [[1 << 20], [1], [3]])
async def test_malformed_bodies(body: bytes, message: str, sizes: list[int]) -> None:
    with pytest.raises(MalformedUpload, match=message):
        await collect(Feed(body, sizes))


async def test_error_is_raised_only_when_the_bad_part_is_reached() -> None:
    body = encode(form_part(b"good"), b"\r\nno headers")
    stream = MultipartStream(Feed(body), BOUNDARY)
    assert await stream.next_part() == info()
    assert await stream.read_chunk() == b"good"
    with pytest.raises(MalformedUpload, match="Content-Disposition"):
        await stream.next_part()


async def test_malformed_disposition_emits_no_warnings(recwarn: pytest.WarningsRecorder) -> None:
    body = encode(b"Content-Disposition: form-data; a=b=c; name=\r\n\r\nx")
    with pytest.raises(MalformedUpload):
        await collect(Feed(body))
    assert not recwarn.list


class Disconnect(Feed):
    """Serves the body up to ``fail_at`` bytes, then raises like a dropped client."""

    def __init__(self, body: bytes, fail_at: int, exc: BaseException) -> None:
        super().__init__(body, [7])
        self.fail_at = fail_at
        self.exc = exc

    async def __call__(self) -> bytes:
        if self.pos >= self.fail_at:
            raise self.exc
        return await super().__call__()


@pytest.mark.parametrize("where", ["preamble", "headers", "body", "closing", "epilogue"])
@pytest.mark.parametrize("exc", [ConnectionResetError("reset"), ClientDisconnected("gone")])
async def test_read_exceptions_propagate_unchanged(where: str, exc: BaseException) -> None:
    body = encode(form_part(b"y" * 100), preamble=b"p" * 50, epilogue=b"\r\n" + b"e" * 50)
    fail_at = {
        "preamble": 20,
        "headers": body.index(b"Content-Disposition") + 5,
        "body": body.index(b"y" * 100) + 50,
        "closing": body.index(DELIM + b"--") + 3,
        "epilogue": len(body) - 20,
    }[where]
    with pytest.raises(type(exc)) as caught:
        await collect(Disconnect(body, fail_at, exc))
    assert caught.value is exc


# --------------------------------------------------------------------------- properties

BCHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "


@st.composite
def boundaries(draw: st.DrawFn) -> bytes:
    # No leading space: aiohttp's Content-Type parser (the oracle) strips it.
    first = draw(st.sampled_from(BCHARS.strip()))
    middle = draw(st.text(alphabet=BCHARS, max_size=68))
    last = draw(st.sampled_from(BCHARS.strip()))
    return (first + middle + last).encode()[: draw(st.integers(1, 70))].rstrip(b" ") or b"b"


# Field names and filenames as a browser would quote them: no quote, backslash, CR, LF; plus no
# ';' and no leading '/' (aiohttp's Content-Disposition parser treats those specially).
names = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\;%\u2028\u2029'
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: not s.startswith("/"))


@dataclass
class GenPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@st.composite
def part_data(draw: st.DrawFn, boundary: bytes) -> bytes:
    delim = b"\r\n--" + boundary
    pieces = st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", boundary, b"--" + boundary]
        ),
        st.integers(0, len(delim) - 1).map(lambda k: delim[:k]),
    )
    data = b"".join(draw(st.lists(pieces, max_size=12)))
    # A correct encoder picks a boundary that does not occur in the part, which includes the
    # CRLF ending its headers: a body may not start with "--boundary" either.
    while delim in b"\r\n" + data:
        data = (b"\r\n" + data).replace(delim, delim[:-1] + b"#")[2:]
    return data


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[GenPart]]:
    boundary = draw(boundaries())
    parts = [
        GenPart(
            name=draw(names),
            filename=draw(st.none() | names),
            content_type=draw(st.none() | st.sampled_from(["image/jpeg", "text/plain; charset=x"])),
            data=draw(part_data(boundary)),
        )
        for _ in range(draw(st.integers(0, 5)))
    ]
    body = encode(
        *(form_part(p.data, p.name, p.filename, p.content_type) for p in parts),
        boundary=boundary,
        preamble=draw(st.sampled_from([b"", b"preamble", b"--" + boundary[:-1]])),
        epilogue=draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue \r\n--" + boundary])),
    )
    return boundary, body, parts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies(), sizes=st.lists(st.integers(1, 80), min_size=1, max_size=8))
async def test_roundtrip_property(
    case: tuple[bytes, bytes, list[GenPart]], sizes: list[int]
) -> None:
    boundary, body, parts = case
    got = await collect(Feed(body, sizes), boundary)
    assert got == [(PartInfo(p.name, p.filename, p.content_type), p.data) for p in parts]


def aiohttp_disposition(value: str) -> tuple[str | None, str | None] | None:
    """aiohttp's (name, filename) for a Content-Disposition value; None if not form-data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kind, params = parse_content_disposition(value)
    if kind != "form-data":
        return None
    return content_disposition_filename(params, "name"), content_disposition_filename(
        params, "filename"
    )


header_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00")
)


@settings(max_examples=300, deadline=None)
@given(name=header_text, filename=st.none() | header_text.filter(lambda t: "\\" not in t))
def test_simple_disposition_fast_path_matches_aiohttp(name: str, filename: str | None) -> None:
    value = f'form-data; name="{name}"'
    if filename is not None:
        value += f'; filename="{filename}"'
    expected = aiohttp_disposition(value)
    if expected is None:  # e.g. an unbalanced quote: aiohttp cannot parse it
        with pytest.raises(MalformedUpload, match="Content-Disposition"):
            _disposition_names(value)
    else:
        assert _disposition_names(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        'form-data; name="files"; filename="/etc/passwd"',
        'form-data; name="//x"',
        'form-data; name=""; filename=""',
        'form-data; name="a"; filename="b"; filename*=UTF-8\'\'%C3%A9.jpg',
        "form-data; name=files; filename=plain.jpg",
        'FORM-DATA; NAME="x"',
        'form-data; name="a\\"b"; filename="c\\\\d"',
    ],
)
def test_disposition_names_match_aiohttp(value: str) -> None:
    assert _disposition_names(value) == aiohttp_disposition(value)


@pytest.mark.parametrize(
    ("value", "filename"),
    [
        ('form-data; name="files"; filename="C:\\x\\y.jpg"', "C:\\x\\y.jpg"),
        ('form-data; name="files"; filename="a\\b.png"', "a\\b.png"),
    ],
)
def test_backslashes_in_a_quoted_filename_are_literal(value: str, filename: str) -> None:
    """Browsers never send quoted-pairs (WHATWG escapes '"' as %22), and old clients send
    Windows paths unescaped: the separators must survive for names.basename to see them."""
    assert _disposition_names(value) == ("files", filename)
    assert aiohttp_disposition(value) != ("files", filename)  # where aiohttp would differ


async def aiohttp_parse(body: bytes, boundary: bytes, chunk: int) -> list[tuple[PartInfo, bytes]]:
    """The oracle: aiohttp's own MultipartReader on the same body."""
    stream = fed_stream_reader(body[i : i + chunk] for i in range(0, len(body), chunk))
    content_type = f'multipart/form-data; boundary="{boundary.decode()}"'
    reader = MultipartReader({"Content-Type": content_type}, stream)
    out: list[tuple[PartInfo, bytes]] = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        got = PartInfo(part.name, part.filename, part.headers.get("Content-Type"))
        out.append((got, bytes(await part.read())))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=bodies(),
    chunk=st.integers(1, 100),
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=8),
)
async def test_agrees_with_aiohttp(
    case: tuple[bytes, bytes, list[GenPart]], chunk: int, sizes: list[int]
) -> None:
    boundary, body, _ = case
    assert await collect(Feed(body, sizes), boundary) == await aiohttp_parse(body, boundary, chunk)


@pytest.mark.parametrize("data", TRICKY_DATA)
async def test_tricky_data_agrees_with_aiohttp(data: bytes) -> None:
    body = encode(form_part(data, filename="caf\u00e9.jpg"), form_part(b"", name="note"))
    assert await collect(Feed(body, [5])) == await aiohttp_parse(body, BOUNDARY, 64)


# ----------------------------------------------------------------- windows of reused buffers


class WindowFeed(Feed):
    """A fake ``read`` as the body reader serves a body: windows of small reused blocks, each
    filled piece by piece (contiguous windows) before the next is taken. A block is taken again
    only as the :class:`Window` contract allows, and then first filled with delimiters, as is
    every block past its last window: a scanner reading stale bytes, or past a window's end,
    finds parts that are not there."""

    def __init__(self, body: bytes, sizes: Iterable[int], block: int) -> None:
        super().__init__(body, sizes)
        self.pool = BlockPool(size=block)
        self.block: bytearray | None = None
        self.filled = 0
        self.retired: list[bytearray] = []

    def _new_block(self) -> bytearray:
        block = self.pool.take()
        block[:] = (DELIM * (len(block) // len(DELIM) + 1))[: len(block)]
        return block

    async def __call__(self) -> Window | bytes:  # type: ignore[override]
        size = len(self.block) if self.block is not None else self.pool.size
        data = self.body[self.pos : self.pos + min(next(self.sizes), size)]
        self.pos += len(data)
        if not data:
            return b""
        if self.block is None or self.filled + len(data) > len(self.block):
            if self.block is not None:
                self.retired.append(self.block)
            self.block, self.filled = self._new_block(), 0
        for block in self.retired:  # a window of another block is returned now
            self.pool.give(block)
        self.retired.clear()
        start, self.filled = self.filled, self.filled + len(data)
        self.block[start : self.filled] = data
        return Window(self.block, start, self.filled)


async def outcome(read: Feed) -> list[tuple[PartInfo, bytes]] | str:
    try:
        return await collect(read)
    except MalformedUpload as error:
        return f"MalformedUpload: {error.detail}"


@pytest.mark.parametrize("seed", range(300))
async def test_windows_of_reused_buffers_read_as_bytes_do(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [b"\r", b"\r\n", b"\r\n-", DELIM[:-1], DELIM[: rng.randrange(len(DELIM))], b"x" * 50]
    parts = [
        form_part(b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30))))
        for _ in range(rng.randrange(0, 5))
    ]
    body = encode(*parts, preamble=rng.choice([b"", b"pre"]), epilogue=rng.choice([b"", b"\r\n"]))
    if rng.random() < 0.3:
        body = body[: rng.randrange(len(body) + 1)]  # truncated: the same error both ways
    sizes = [rng.randrange(1, 120) for _ in range(7)]
    expected = await outcome(Feed(body, sizes))
    assert await outcome(WindowFeed(body, sizes, block=rng.choice([40, 64, 200]))) == expected
