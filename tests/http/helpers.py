"""Tools for driving the server with exactly the bytes a test means to send.

aiohttp's own client percent-encodes file names and normalises URLs, so hostile names, broken
bodies and odd paths are written here byte for byte: multipart bodies are built by hand, and raw
HTTP/1.1 exchanges go over a plain TCP connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse
from multidict import CIMultiDict

from tests.conftest import Client

BOUNDARY = "clustrTestBoundary7MA4YWxkTrZu0gW"
WAIT_SECONDS = 30.0
"""Upper bound for anything a test waits for; generous, since CI machines can be slow."""


# --------------------------------------------------------------------------- multipart bodies


@dataclass(frozen=True, slots=True)
class Part:
    """One form-data part. ``filename`` is written into the header verbatim (UTF-8), quoted."""

    data: bytes
    filename: str | None = "a.jpg"
    name: str = "files"
    content_type: str | None = "application/octet-stream"
    raw_disposition: str | None = None
    """Replaces the whole Content-Disposition value (for ``filename*=`` and other oddities)."""

    def encode(self) -> bytes:
        disposition = self.raw_disposition
        if disposition is None:
            disposition = f'form-data; name="{self.name}"'
            if self.filename is not None:
                disposition += f'; filename="{self.filename}"'
        head = f"Content-Disposition: {disposition}\r\n"
        if self.content_type is not None:
            head += f"Content-Type: {self.content_type}\r\n"
        return head.encode() + b"\r\n" + self.data


def multipart_body(*parts: Part, boundary: str = BOUNDARY, closed: bool = True) -> bytes:
    """A multipart/form-data body; ``closed=False`` leaves out the closing boundary."""
    delimiter = b"--" + boundary.encode()
    out = b"".join(delimiter + b"\r\n" + part.encode() + b"\r\n" for part in parts)
    return out + (delimiter + b"--\r\n" if closed else b"")


def files_body(*files: tuple[str, bytes]) -> bytes:
    """A body of ``files`` parts, one per (filename, bytes)."""
    return multipart_body(*(Part(data, filename) for filename, data in files))


def multipart_headers(boundary: str = BOUNDARY) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def post_body(
    client: Client, body: bytes, boundary: str = BOUNDARY, *, query: str = ""
) -> ClientResponse:
    return await client.post(f"/api/upload{query}", data=body, headers=multipart_headers(boundary))


async def upload(client: Client, *files: tuple[str, bytes]) -> ClientResponse:
    """POST ``files`` parts exactly as given (names not percent-encoded)."""
    return await post_body(client, files_body(*files))


async def upload_ok(client: Client, *files: tuple[str, bytes]) -> list[dict[str, Any]]:
    """Upload, insist on a 200, and return the envelope's ``data`` items."""
    response = await upload(client, *files)
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["message"] == f"Successfully uploaded {len(files)} files"
    items: list[dict[str, Any]] = payload["data"]
    return items


async def expect_error(response: ClientResponse, status: int) -> str:
    """Insist on a ``{"detail": ...}`` JSON error with ``status``; return the detail. A refused
    upload's error may also name the file it is about and its index (:func:`error_body`)."""
    detail: str = (await error_body(response, status))["detail"]
    return detail


async def error_body(response: ClientResponse, status: int) -> dict[str, Any]:
    """The JSON error body: ``{"detail"}``, or ``{"detail", "file", "index"}``."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Traceback" not in text
    payload: dict[str, Any] = json.loads(text)
    assert set(payload) in ({"detail"}, {"detail", "file", "index"}), payload
    assert isinstance(payload.get("file", ""), str)
    assert isinstance(payload.get("index", 0), int)
    detail = payload["detail"]
    assert isinstance(detail, str)
    assert detail
    return payload


# --------------------------------------------------------------------------- raw HTTP


@dataclass(slots=True)
class RawResponse:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    """Read one response's status line and headers (an interim 100 Continue is one too)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _version, status, reason = [*status_line.split(" ", 2), ""][:3]
    headers: CIMultiDict[str] = CIMultiDict()
    for line in filter(None, lines):
        key, _, value = line.partition(":")
        headers.add(key.strip(), value.strip())
    return RawResponse(int(status), reason, headers)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """Read one whole final response (Content-Length bodies only, which is all the server sends
    for the responses tested this way)."""
    response = await read_head(reader)
    length = int(response.headers.get("Content-Length", "0"))
    response.body = await asyncio.wait_for(reader.readexactly(length), WAIT_SECONDS)
    return response


async def raw_request(host: str, port: int, request: bytes) -> RawResponse:
    """Send ``request`` as is, return the response, close."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def request_head(
    method: str, target: str, headers: Mapping[str, str] | None = None, *, port: int = 0
) -> bytes:
    """A request line and header block, byte for byte (the target is not normalised)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of HTTP/1.1 chunked transfer-coding (``b""`` gives the last chunk)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chunked(body: bytes, size: int = 64 * 1024, *, last: bool = True) -> bytes:
    """``body`` in chunked transfer-coding; with the final empty chunk unless ``last=False``."""
    pieces = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(map(chunk, pieces)) + (chunk(b"") if last else b"")


def part_head(filename: str, name: str = "files", boundary: str = BOUNDARY) -> bytes:
    """The delimiter and headers that open a file part, for bodies sent piece by piece."""
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- polling


async def eventually(condition: Callable[[], bool], *, within: float = WAIT_SECONDS) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"condition never held: {condition}"
        await asyncio.sleep(0.02)
