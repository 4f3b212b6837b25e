"""A strict, streaming multipart/form-data scanner that hands out body bytes without copying them.

aiohttp's ``MultipartReader`` copies every body byte several times and, with a large
``read_chunk`` size, pushes the unread tail back into the stream at every part boundary, which
is ruinous for hundreds of large parts. :class:`MultipartStream` instead searches each chunk
returned by ``read`` for the whole delimiter with one ``bytes.find`` and yields ``memoryview``
slices of that very chunk (``bytes`` is immutable, so the slices stay valid). A delimiter that
straddles two reads is caught by holding back only the chunk's tail that could start one.

``read`` may also return a :class:`Window`: new bytes in a buffer that its producer reuses (the
connection's body reader, :mod:`clustr_aio.runtime.body_reader`, reads them with
``recv_into``). Pieces of a window are handed on as ``memoryview`` slices too; the producer
keeps the window's contract so that they stay valid. A window that continues the last one in
the same buffer extends it in place, so a delimiter held back at a read's end costs no copy.

The scanner knows nothing of HTTP: it pulls from an async callable (in production
``request.content.readany``). Every malformed body raises
:class:`~clustr_aio.domain.errors.MalformedUpload`; exceptions raised by ``read`` itself (client
disconnects) propagate untouched. Once any exception has been raised the stream must not be used
again. :func:`file_parts` hands its file parts to the ingest pipeline as
:class:`~clustr_aio.ingest.pipeline.IncomingFile` objects.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import (
    BadContentDispositionHeader,
    BadContentDispositionParam,
    content_disposition_filename,
    parse_content_disposition,
)

from clustr_aio.domain.errors import MalformedUpload, NoFilesUploaded
from clustr_aio.ingest.pipeline import IncomingFile

__all__ = ["MultipartStream", "PartInfo", "ReadChunk", "Window", "file_parts", "parse_boundary"]


class Window:
    """``buffer[start:stop]``: the bytes just received into a buffer its producer reuses.

    The producer's promise, which makes slices of it as safe as slices of ``bytes``: it writes
    into ``buffer[:stop]`` again only once no ``memoryview`` of the buffer exists (the scanner
    hands its pieces on only as views) and a window of another buffer has been returned since.
    The next window of the same buffer, if any, starts at ``stop``.
    """

    __slots__ = ("buffer", "start", "stop")

    def __init__(self, buffer: bytearray, start: int, stop: int) -> None:
        self.buffer = buffer
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start


ReadChunk = Callable[[], Awaitable[bytes | Window]]
"""Returns the next bytes available, ``b""`` (or an empty window) at EOF
(``request.content.readany``, or the body reader's ``read``, in production)."""

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace. CR and LF are not bchars, which the
# scanner relies on: the delimiter CRLF "--" boundary then holds exactly one CR, at its start.
_BOUNDARY_RE: Final = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")
_MAX_BOUNDARY: Final = 70

# One Content-Type parameter: `; key = value`, the value a quoted-string (group 2, quoted-pairs
# allowed) or anything up to the next `;` (group 3). A `;` inside quotes does not split.
_PARAM_RE: Final = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))', re.DOTALL)
_QUOTED_PAIR_RE: Final = re.compile(r"\\(.)", re.DOTALL)
# What browsers, curl and requests send: the one parameter, unquoted, of valid bchars (no space)
# and at most 70 of them. One match instead of the general parse; anything else takes that.
_SIMPLE_BOUNDARY_RE: Final = re.compile(r"\s*boundary=([0-9A-Za-z'()+_,\-./:=?]{1,70})\s*", re.I)

# A part header line: token ":" OWS value OWS, with no stray CR, LF or NUL anywhere (a bare CR or
# LF would let a client smuggle line breaks into a filename). Obsolete line folding is refused.
_HEADER_LINE_RE: Final = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n\x00]*)")

# The exact Content-Disposition that browsers, curl and requests send, with no ';' in the
# quoted values. aiohttp's parse_content_disposition (used for everything else) costs ~30 us a
# call, as it rebuilds a regex character class each time: a third of the scan time for 500
# parts of 500 KB. tests/ingest/test_multipart.py checks this path gives aiohttp's answers.
# One deliberate difference: a backslash in a quoted filename is literal, as browsers send it
# (WHATWG escapes '"' as %22 and never uses quoted-pairs), so an old client's unescaped
# "C:\x\y.jpg" keeps its path separators and becomes y.jpg, not "C:xy.jpg".
_SIMPLE_DISPOSITION_RE: Final = re.compile(
    r'form-data; name="([^"\\;]*)"(?:; filename="([^";]*)")?'
)

_TRUNCATED: Final = "multipart body ended before the closing boundary"
_NO_BOUNDARY: Final = "no multipart boundary found in the request body"


def parse_boundary(content_type: str | None) -> bytes:
    """Return the multipart boundary (without the leading ``--``) from a Content-Type value.

    Raises :class:`NoFilesUploaded` (406) when the value is not multipart/form-data at all, and
    :class:`MalformedUpload` (400) when it is but the boundary is missing, empty, longer than 70
    characters or holds characters outside RFC 2046 ``bchars``. Quoted values are unquoted.
    """
    mime, _, params = (content_type or "").partition(";")
    if mime.strip().lower() != "multipart/form-data":
        raise NoFilesUploaded("request body is not multipart/form-data")
    simple = _SIMPLE_BOUNDARY_RE.fullmatch(params)
    if simple is not None:
        return simple.group(1).encode("ascii")
    values = {
        _QUOTED_PAIR_RE.sub(r"\1", quoted) if quoted else plain.strip()
        for key, quoted, plain in _PARAM_RE.findall(";" + params)
        if key.lower() == "boundary"
    }
    if not values:
        raise MalformedUpload("multipart/form-data Content-Type has no boundary parameter")
    if len(values) > 1:
        raise MalformedUpload("multipart/form-data Content-Type has conflicting boundaries")
    # Header values may hold surrogate escapes of undecodable bytes; any non-ASCII character
    # becomes a backslash escape, which the bchars check then refuses.
    boundary = values.pop().encode("ascii", "backslashreplace")
    problem = _boundary_problem(boundary)
    if problem:
        raise MalformedUpload(f"multipart boundary {problem}")
    return boundary


def _boundary_problem(boundary: bytes) -> str | None:
    """Why ``boundary`` is not a valid RFC 2046 boundary, or None if it is."""
    if not boundary:
        return "is empty"
    if not _BOUNDARY_RE.fullmatch(boundary):
        return "contains characters not allowed by RFC 2046"
    if len(boundary) > _MAX_BOUNDARY:
        return f"is longer than {_MAX_BOUNDARY} characters"
    return None


async def file_parts(stream: MultipartStream, field_name: str) -> AsyncIterator[IncomingFile]:
    """The file parts named ``field_name``, in order; other parts are read past. A part with
    neither a filename nor a byte is an HTML form's empty file input (no file was chosen) and is
    skipped too; a nameless part with bytes is handed on, for the pipeline to refuse."""
    while (part := await stream.next_part()) is not None:
        if part.name != field_name:
            continue
        chunks = _PartChunks(stream)
        if not part.filename:
            first = await stream.read_chunk()
            if not first:
                continue
            chunks.pending = first
        yield IncomingFile(part.filename or "", chunks)


class _PartChunks:
    """The current part's body as an async iterator (``read_chunk`` until ``b""``), with one
    chunk already read put back in front."""

    __slots__ = ("_stream", "pending")

    def __init__(self, stream: MultipartStream) -> None:
        self._stream = stream
        self.pending: bytes | memoryview | None = None

    def __aiter__(self) -> _PartChunks:
        return self

    async def __anext__(self) -> bytes | memoryview:
        if self.pending is not None:
            chunk, self.pending = self.pending, None
            return chunk
        chunk = await self._stream.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk


@dataclass(frozen=True, slots=True)
class PartInfo:
    """The headers of one form-data part that the ingest pipeline cares about."""

    name: str | None
    """Form field name from Content-Disposition."""
    filename: str | None
    """Filename (RFC 2231 ``filename*`` preferred when present) as sent; None if absent."""
    content_type: str | None
    """The part's Content-Type header value, if any."""


# Scanner states.
_PREAMBLE: Final = 0  # before the first delimiter: data is discarded
_BODY: Final = 1  # inside a part's body: data is handed to read_chunk()
_DELIM: Final = 2  # positioned at a delimiter (CRLF "--" boundary) not yet consumed
_DONE: Final = 3  # the closing delimiter has been seen


class MultipartStream:
    """Streaming multipart/form-data scanner over an async ``read`` callable.

    Call :meth:`next_part` to move to each part, then :meth:`read_chunk` until it returns ``b""``
    to get that part's body. ``max_header_bytes`` bounds each part's header block, counted from
    the end of its boundary through the blank line. Memory held is about one chunk of ``read``
    (plus, at most, one header block), whatever the part sizes.
    """

    __slots__ = ("_buf", "_delim", "_end", "_max_header_bytes", "_pos", "_read", "_state")

    def __init__(
        self, read: ReadChunk, boundary: bytes, *, max_header_bytes: int = 16 * 1024
    ) -> None:
        problem = _boundary_problem(boundary)
        if problem:  # A programming error: the boundary should come from parse_boundary().
            raise ValueError(f"boundary {problem}")
        self._read = read
        self._delim = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        # The stream is scanned as if it began with CRLF, so a body that opens directly with
        # "--boundary" (the usual case: no preamble) is found by the same delimiter search.
        self._buf: bytes | bytearray = b"\r\n"
        self._pos = 0  # self._buf[self._pos:self._end] is the data not yet consumed
        self._end = 2  # len(self._buf) for bytes; a window's stop for a reused buffer
        self._state: int = _PREAMBLE

    async def next_part(self) -> PartInfo | None:
        """Advance to the next part and return its headers; None after the closing delimiter.

        Whatever of the current part's body was not read is discarded; so are the preamble and
        the epilogue (which is drained until ``read`` returns ``b""``).
        """
        while self._state in (_PREAMBLE, _BODY):
            await self._scan()  # discards; stops at the next delimiter
        if self._state == _DONE:
            return None
        self._pos += len(self._delim)
        while self._end - self._pos < 2:
            await self._more(_TRUNCATED)
        if self._buf.startswith(b"--", self._pos, self._end):
            # Closing delimiter: whatever follows is epilogue, to be ignored.
            self._state = _DONE
            self._buf, self._pos, self._end = b"", 0, 0
            while await self._read():
                pass
            return None
        info = _parse_head(await self._read_head())
        await self._enter_body()
        return info

    async def read_chunk(self) -> bytes | memoryview:
        """Return the next piece of the current part's body; ``b""`` once the body has ended.

        Pieces are as large as the data that has arrived allows, and are usually zero-copy
        slices of what ``read`` returned; an empty piece is never returned before the end.
        """
        if self._state != _BODY:
            return b""
        return await self._scan()

    async def _scan(self) -> bytes | memoryview:
        """Return the data before the next delimiter, or ``b""`` (and enter _DELIM) at one."""
        delim = self._delim
        while True:
            buf, pos, end = self._buf, self._pos, self._end
            at = buf.find(delim, pos, end)
            if at >= 0:
                self._pos, self._state = at, _DELIM
                return memoryview(buf)[pos:at] if at > pos else b""
            # No whole delimiter; but one may start in the last len(delim) - 1 bytes and end in
            # the next read. The delimiter holds a single CR, at its start, so only the last CR
            # in that window can begin it: hold back from there if what follows matches so far.
            cr = buf.rfind(b"\r", max(pos, end - len(delim) + 1), end)
            if cr >= 0 and buf.startswith(delim[: end - cr], cr, end):
                end = cr
            if end > pos:
                self._pos = end
                if pos == 0 and end == len(buf) and type(buf) is bytes:
                    return buf
                return memoryview(buf)[pos:end]  # a reused buffer: never handed on itself
            # Nothing but a possible delimiter start is left: it needs the next read.
            await self._more(_TRUNCATED if self._state == _BODY else _NO_BOUNDARY)

    async def _enter_body(self) -> None:
        """Step over the CRLF that ends the header block, unless it starts a delimiter.

        RFC 2046 makes a part's body optional (``body-part := MIME-part-headers [CRLF *OCTET]``)
        and forbids the delimiter anywhere in a part, so "headers CRLF CRLF --boundary" is a
        part with no body followed by a delimiter, not a body that starts with "--boundary".
        aiohttp reads it the same way.
        """
        delim = self._delim
        while self._end - self._pos < len(delim) and delim.startswith(
            self._buf[self._pos : self._end]
        ):
            await self._more(_TRUNCATED)
        if self._buf.startswith(delim, self._pos, self._end):
            self._state = _DELIM
        else:
            self._pos += 2
            self._state = _BODY

    async def _more(self, eof_message: str) -> None:
        """Append the next read to the unconsumed data, or raise ``eof_message`` at EOF.

        This copies the new chunk only when unconsumed data is left over, i.e. a possible
        delimiter start (< len(delimiter) bytes) or an unfinished boundary line / header block,
        and the new bytes do not continue it in the same buffer: at most once per chunk, and
        rarely at all in the body of a part.
        """
        buf, pos, end = self._buf, self._pos, self._end
        if pos and type(buf) is bytes:
            # Let go of what was consumed before waiting: the pieces returned are slices of the
            # last read, which a stalled upload would otherwise keep alive whole for as long
            # as it stalls (300 of them: 30 MiB). (A reused buffer is its producer's to keep.)
            self._buf, self._pos, self._end = buf[pos:end], 0, end - pos
        chunk = await self._read()
        if not chunk:
            raise MalformedUpload(eof_message)
        new: bytes | bytearray
        if type(chunk) is Window:
            new, start, stop = chunk.buffer, chunk.start, chunk.stop
            if new is self._buf and start == self._end:  # more of the same buffer: no copy
                self._end = stop
                return
        else:
            assert isinstance(chunk, bytes)
            new, start, stop = chunk, 0, len(chunk)
        if self._pos == self._end:
            self._buf, self._pos, self._end = new, start, stop
            return
        joined = self._buf[self._pos : self._end] + memoryview(new)[start:stop]
        self._buf, self._pos, self._end = joined, 0, len(joined)

    async def _read_head(self) -> bytes | bytearray:
        """Consume the rest of the boundary line and the part's header block; return them.

        The returned bytes are the transport padding, CRLF, then each header line with its CRLF;
        the CRLF of the blank line that ends the block is left unconsumed (see _enter_body).
        """
        limit = self._max_header_bytes
        searched = 0  # bytes after self._pos known to hold no CRLFCRLF start
        while True:
            buf, pos = self._buf, self._pos
            stop = min(self._end, pos + limit)
            end = buf.find(b"\r\n\r\n", pos + searched, stop)
            if end >= 0:
                self._pos = end + 2  # at the CRLF that ends the header block
                return buf[pos : end + 2]
            if stop - pos >= limit:
                raise MalformedUpload(f"part headers exceed {limit} bytes")
            searched = max(0, stop - pos - 3)
            await self._more("multipart body ended inside part headers")


def _parse_head(head: bytes | bytearray) -> PartInfo:
    """Validate a boundary-line tail plus header block (see _read_head) and extract PartInfo."""
    eol = head.index(b"\r\n")
    if head[:eol].strip(b" \t"):  # RFC 2046 allows only transport padding after a boundary
        raise MalformedUpload("unexpected data after a multipart boundary")
    # Browsers send raw UTF-8 in quoted filenames; never fail on undecodable bytes.
    text = head[eol + 2 : -2].decode("utf-8", "replace")
    disposition: str | None = None
    content_type: str | None = None
    for line in text.split("\r\n") if text else ():
        match = _HEADER_LINE_RE.fullmatch(line)
        if match is None:
            raise MalformedUpload(f"malformed part header line: {line[:100]!r}")
        name, value = match.group(1).lower(), match.group(2).rstrip(" \t")
        if name == "content-disposition":
            if disposition is not None:
                raise MalformedUpload("part has more than one Content-Disposition header")
            disposition = value
        elif name == "content-type":
            if content_type is not None:
                raise MalformedUpload("part has more than one Content-Type header")
            content_type = value
    if disposition is None:
        raise MalformedUpload("part is missing Content-Disposition: form-data")
    if content_type is not None and content_type.lower().startswith("multipart/"):
        raise MalformedUpload("nested multipart parts are not supported")
    name, filename = _disposition_names(disposition)
    return PartInfo(name=name, filename=filename, content_type=content_type)


def _disposition_names(disposition: str) -> tuple[str | None, str | None]:
    """The (name, filename) of a form-data Content-Disposition value, as aiohttp parses them."""
    simple = _SIMPLE_DISPOSITION_RE.fullmatch(disposition)
    if simple is not None:
        # What aiohttp makes of a quoted value without backslashes: leading '/' stripped.
        name, filename = simple.groups()
        return name.lstrip("/"), None if filename is None else filename.lstrip("/")
    # aiohttp reports oddities through warnings.warn with the client's header text in the
    # message; ignore them (they would fill the log and the warnings registry), since a header it
    # cannot parse is rejected below anyway. The filter change is process-wide but brief, made on
    # the event loop thread with no await inside, and covers only aiohttp's two categories.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadContentDispositionHeader)
        warnings.simplefilter("ignore", BadContentDispositionParam)
        kind, params = parse_content_disposition(disposition)
    if kind is None:
        raise MalformedUpload(f"part has a malformed Content-Disposition: {disposition[:100]!r}")
    if kind != "form-data":
        raise MalformedUpload("part is missing Content-Disposition: form-data")
    return (
        content_disposition_filename(params, "name"),
        content_disposition_filename(params, "filename"),
    )
