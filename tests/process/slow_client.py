"""A client that uploads slowly, over a plain socket in a thread, so that a test can signal
or kill the server while the body is still on its way."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import JPEG, temp_files
from tests.server_process import wait_until

__all__ = ["SlowUpload", "UploadOutcome", "jpeg_bytes", "upload_in_flight"]

_BOUNDARY = "clustrProcessTestBoundary"
_BURST = 3 * 1024 * 1024 // 2
"""1.5 MiB: more than the storage's 1 MiB write blocks, so a temporary file appears at once."""


def jpeg_bytes(size: int) -> bytes:
    """``size`` bytes that pass as a JPEG: a real one's headers, random image data, an EOI."""
    return JPEG[:-2] + os.urandom(size - len(JPEG)) + b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """How an upload ended: a response (``status`` set) or a dropped connection (``error``)."""

    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes = b""
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class SlowUpload:
    """``POST /api/upload`` of one file: the first ``burst`` bytes of its body at once (enough
    for the server to start writing a temporary file), the rest ``chunk`` bytes every ``delay``
    seconds.

    The request declares its ``Content-Length`` and keeps the connection alive, as a browser
    does. If the server answers before the body is complete, sending stops and the answer is
    read. :meth:`start` returns at once; :meth:`outcome` waits for the end.
    """

    def __init__(
        self,
        port: int,
        filename: str,
        data: bytes,
        *,
        burst: int = 0,
        chunk: int = 64 * 1024,
        delay: float = 0.05,
    ) -> None:
        self.port = port
        self.data = data
        self._burst = burst
        self._chunk = chunk
        self._delay = delay
        head = (
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        self._body = head + data + f"\r\n--{_BOUNDARY}--\r\n".encode()
        self.sent = 0
        self._outcome: UploadOutcome | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowUpload:
        self._thread.start()
        return self

    @property
    def body_complete(self) -> bool:
        return self.sent >= len(self._body)

    def outcome(self, timeout: float = 60.0) -> UploadOutcome:
        self._thread.join(timeout)
        assert self._outcome is not None, "the upload did not end in time"
        return self._outcome

    def _run(self) -> None:
        try:
            self._outcome = self._exchange()
        except OSError as error:  # reset, broken pipe: the server dropped the connection
            self._outcome = UploadOutcome(error=f"{type(error).__name__}: {error}")
        except http.client.HTTPException as error:
            self._outcome = UploadOutcome(error=f"{type(error).__name__}: {error}")

    def _exchange(self) -> UploadOutcome:
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.sendall(
                (
                    f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Content-Type: multipart/form-data; boundary={_BOUNDARY}\r\n"
                    f"Content-Length: {len(self._body)}\r\n\r\n"
                ).encode()
            )
            while self.sent < len(self._body):
                if select.select([sock], [], [], 0)[0]:
                    break  # an early answer (or the connection closed): stop sending, read it
                size = self._burst if self.sent == 0 and self._burst else self._chunk
                piece = self._body[self.sent : self.sent + size]
                sock.sendall(piece)
                self.sent += len(piece)
                time.sleep(self._delay)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return UploadOutcome(
                status=response.status,
                headers={key.lower(): value for key, value in response.getheaders()},
                body=response.read(),
            )


def upload_in_flight(
    port: int,
    upload_folder: Path,
    filename: str,
    data: bytes,
    *,
    chunk: int = 64 * 1024,
    delay: float = 0.1,
) -> SlowUpload:
    """Start a :class:`SlowUpload` of ``data`` and return once part of it is on disk in
    ``upload_folder`` (in flight for sure): the first 1.5 MiB at once, the rest ``chunk`` bytes
    every ``delay`` seconds."""
    upload = SlowUpload(port, filename, data, burst=_BURST, chunk=chunk, delay=delay).start()
    wait_until(lambda: bool(temp_files(upload_folder)), "a temporary file")
    return upload
