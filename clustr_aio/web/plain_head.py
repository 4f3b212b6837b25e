"""Request heads of the plainest shape, read from a connection's raw bytes before aiohttp's
parser sees them, for answers given from the connection (:mod:`clustr_aio.web.quick`).

aiohttp's parser makes every request head a ``RawRequestMessage``: a yarl URL, a
``CIMultiDict`` of the headers, a payload object, a queue entry. For a hot thumbnail GET that
is most of what the server spends (see the README's bench H), while the head is a request line
and a handful of short header lines. So a connection whose parser holds nothing (it stands
between two requests) may first ask :func:`plain_head` whether the next bytes are one such head,
complete; only what is certainly parsed the same way by llhttp is recognised:

- ``GET``, an origin-form target of unreserved characters and ``/?&=`` only (no percent
  escape, ``+`` or fragment to decode: the caller matches the path exactly, and refuses dot
  segments by doing so), ``HTTP/1.1``;
- header lines ``Name: value`` ended by CRLF, the names among those the caller can answer (so
  no ``Content-Length``, ``Transfer-Encoding``, ``Expect``, ``Upgrade``: no body, no upgrade),
  each once, values of printable ASCII, spaces and tabs (their surrounding spaces and tabs are
  not part of them, as in aiohttp);
- the whole head, blank line included, in at most 8,190 bytes (aiohttp's longest line).

Anything else (another method, HTTP/1.0, an obsolete line folding, a bare LF, a duplicate, a
control character, an incomplete head) is None, and the bytes go to aiohttp's parser as ever,
which answers a malformed head with its 400: recognising less only costs speed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar

__all__ = ["PlainHead", "ReadHeads", "keep_alive_head", "plain_head"]

MAX_PLAIN_HEAD: Final = 8190
"""aiohttp's ``max_line_size``: a whole plain head fits in what it allows one line."""
_REQUEST_LINE: Final = re.compile(rb"GET (/[A-Za-z0-9._~/?&=-]*) HTTP/1\.1")
_FIELD_CHARACTERS: Final = bytes(range(0x20, 0x7F)) + b"\t"
"""What a header value may hold: printable ASCII, space and tab (deleted, nothing is left)."""
_BLANK_LINE: Final = b"\r\n\r\n"


class PlainHead(NamedTuple):
    target: str
    """The request target, as sent (path and query)."""
    headers: dict[bytes, bytes]
    """Lower-case names to values."""
    end: int
    """Where the head ends in the bytes (after its blank line): the next request starts there."""


def plain_head(data: bytes, start: int, names: frozenset[bytes]) -> PlainHead | None:
    """The plain head that starts at ``data[start]``, complete, with only headers whose
    lower-case names are in ``names``; None if there is none (see the module documentation)."""
    end = data.find(_BLANK_LINE, start, start + MAX_PLAIN_HEAD)
    if end < 0:
        return None
    lines = data[start:end].split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or name not in names or name in headers:
            return None  # a name with a space, a tab or an LF in it is in no list
        value = value.strip(b" \t")
        if value.translate(None, _FIELD_CHARACTERS):
            return None  # a control character (CR, LF, NUL…) or a byte that is not ASCII
        headers[name] = value
    return PlainHead(request_line.group(1).decode("ascii"), headers, end + len(_BLANK_LINE))


def keep_alive_head(data: bytes, start: int, names: frozenset[bytes]) -> PlainHead | None:
    """:func:`plain_head`, of a request that leaves its connection open (no ``Connection``
    header, or ``keep-alive``: HTTP/1.1's default), the only kind answered from the bytes."""
    head = plain_head(data, start, names)
    if head is None:
        return None
    connection = head.headers.get(b"connection")
    if connection is not None and connection.lower() != b"keep-alive":
        return None
    return head


_T = TypeVar("_T")


class ReadHeads(Generic[_T]):
    """What a responder reads of plain heads, kept by their bytes as sent: a client sends the
    same bytes for the same resource, so each is read once. ``read`` is given the bytes and
    where the head starts (a complete one), and answers None for a head not to be answered."""

    __slots__ = ("_kept", "_limit", "_read")

    LARGEST: Final = 1024
    """Heads of at most this many bytes are kept, :attr:`_limit` of them (then all dropped)."""

    def __init__(self, read: Callable[[bytes, int], _T | None], limit: int = 1024) -> None:
        self._read = read
        self._limit = limit
        self._kept: dict[bytes, _T] = {}

    def get(self, data: bytes, start: int) -> tuple[_T, int] | None:
        """What ``read`` made of the complete head at ``data[start]``, and where it ends (after
        its blank line); None without a complete head, or when ``read`` declined."""
        end = data.find(_BLANK_LINE, start, start + MAX_PLAIN_HEAD)
        if end < 0:
            return None
        raw = data[start:end]
        read = self._kept.get(raw)
        if read is None:
            read = self._read(data, start)
            if read is None:
                return None
            if len(raw) <= self.LARGEST:
                if len(self._kept) >= self._limit:
                    self._kept.clear()
                self._kept[raw] = read
        return read, end + len(_BLANK_LINE)
