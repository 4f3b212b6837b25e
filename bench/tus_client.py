"""The one tus client of scenarios TL and TB, for both sides: plain HTTP/1.1 on a kept-alive
socket, each chunk sent with ``sendfile(2)`` straight from the file (so the client costs the
same whoever it talks to, and holds no chunk in memory)."""

from __future__ import annotations

import base64
import queue
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bench.clients import BenchError


class TusConnection:
    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        assert parts.hostname is not None
        self.host = f"{parts.hostname}:{parts.port}"
        self.path = parts.path
        self._sock = socket.create_connection((parts.hostname, parts.port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def _exchange(
        self, method: str, path: str, headers: dict[str, str], file: Path | None = None,
        offset: int = 0, count: int = 0,
    ) -> tuple[int, dict[str, str]]:  # fmt: skip
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", "Tus-Resumable: 1.0.0"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {count}")
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if count:
            assert file is not None
            with file.open("rb") as stream:
                self._sock.sendfile(stream, offset, count)
        status_line = self._reader.readline()
        if not status_line:
            raise BenchError(f"{method} {path}: the server closed the connection")
        status = int(status_line.split()[1])
        answer: dict[str, str] = {}
        while (line := self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer[name.strip().lower()] = value.strip()
        if answer.get("transfer-encoding", "").lower() == "chunked":
            while (size := int(self._reader.readline().split(b";")[0], 16)) > 0:
                self._reader.read(size + 2)  # the chunk and its CRLF
            while self._reader.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
        elif length := int(answer.get("content-length", "0")):
            self._reader.read(length)
        return status, answer

    def upload(self, file: Path, *, chunk: int, filename: str, with_upload: bool = False) -> str:
        """Create an upload of ``file`` and send it in PATCHes of ``chunk`` bytes; its URL.
        ``with_upload``: the first chunk is the creation's body (creation-with-upload, what
        tus-js-client's ``uploadDataDuringCreation`` sends), so a small file is one request."""
        size = file.stat().st_size
        meta = f"filename {base64.b64encode(filename.encode()).decode()}"
        headers = {"Upload-Length": str(size), "Upload-Metadata": meta}
        first = min(chunk, size) if with_upload else 0
        if first:
            headers["Content-Type"] = "application/offset+octet-stream"
        status, answer = self._exchange("POST", self.path, headers, file, 0, first)
        if status != 201:
            raise BenchError(f"tus creation answered {status}")
        url = urlsplit(answer["location"]).path
        offset = int(answer["upload-offset"]) if first else 0
        while offset < size:
            count = min(chunk, size - offset)
            headers = {
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            status, answer = self._exchange("PATCH", url, headers, file, offset, count)
            if status != 204:
                raise BenchError(f"tus PATCH answered {status}")
            offset = int(answer["upload-offset"])
        return url


def upload_one(endpoint: str, file: Path, *, chunk: int) -> float:
    """Seconds to upload ``file`` in PATCHes of ``chunk`` bytes."""
    connection = TusConnection(endpoint)
    try:
        start = time.perf_counter()
        connection.upload(file, chunk=chunk, filename=file.name)
        return time.perf_counter() - start
    finally:
        connection.close()


def upload_many(
    endpoint: str, files: Sequence[Path], *, parallel: int, tag: str, with_upload: bool = False
) -> float:
    """Seconds to upload every file, ``parallel`` at a time (one connection each), each as one
    creation and one PATCH (what tus-js-client and Uppy send for a photo by default), or, with
    ``with_upload``, as one creation that carries it (creation-with-upload)."""
    pending: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for file in files:
        pending.put(file)
    failures: list[BaseException] = []

    def worker() -> None:
        connection = TusConnection(endpoint)
        try:
            while True:
                try:
                    file = pending.get_nowait()
                except queue.Empty:
                    return
                name = f"{tag}-{file.name}"
                connection.upload(file, chunk=1 << 40, filename=name, with_upload=with_upload)
        except BaseException as error:  # reported below, from the measuring thread
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise BenchError(f"tus upload failed: {failures[0]}")
    return elapsed
