"""Bounds a hostile or unlucky crowd of clients cannot push a real server past: memory held by
stalled uploads, the connections held by slow ones, the descriptor limit."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import resource
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustr_aio.storage.s3.upload import PROCESS_MEMORY, memory_bound
from tests.conftest import JPEG, temp_files
from tests.process.conftest import StartServer
from tests.process.slow_client import jpeg_bytes
from tests.seaweedfs import SeaweedServer
from tests.server_process import wait_until

MiB = 1024 * 1024
BOUNDARY = "boundsTestBoundary"


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` (peak) figure of /proc/<pid>/status, in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, text
    return int(match[1])


def bytes_in_transit(port: int) -> int:
    """Bytes sent to loopback ``port`` that its server has not read yet: the clients' send
    queues and the server's receive queues, from /proc/net/tcp."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        tx, rx = (int(q, 16) for q in queues.split(":"))
        if int(local.split(":")[1], 16) == port:
            total += rx
        elif int(remote.split(":")[1], 16) == port:
            total += tx
    return total


def upload_head(port: int, length: int, filename: str) -> bytes:
    return (
        f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_stalled_uploads_hold_little_memory_and_give_it_back(
    server_factory: StartServer, sockets: list[socket.socket], event_loop_env: dict[str, str]
) -> None:
    """300 uploads that sent 1 MB and stalled: peak RSS at most 128 MiB, under 80 MiB once
    they are gone (issue 10: 40 -> 342 MiB, and kept). On each loop: asyncio's reads are
    bounded by its recv size, uvloop's by the socket's receive buffer."""
    server = server_factory(
        {"MAX_CONCURRENT_UPLOADS": "1000", "BODY_IDLE_TIMEOUT": "120", **event_loop_env}
    )
    idle = status_kib(server.pid, "VmRSS")
    data = jpeg_bytes(MiB)
    for n in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sockets.append(sock)
        sock.sendall(upload_head(server.port, 4 * MiB, f"stalled-{n}.jpg") + data)
    wait_until(lambda: bytes_in_transit(server.port) == 0, "the server to read every 1 MB")
    time.sleep(1.5)  # and to do with them whatever it does with a stalled body
    peak, now = status_kib(server.pid, "VmHWM"), status_kib(server.pid, "VmRSS")
    # What they sent is on disk, not in memory.
    assert sum(p.stat().st_size for p in temp_files(server.upload_folder)) >= 300 * MiB
    for sock in sockets:
        sock.close()
    wait_until(lambda: not temp_files(server.upload_folder), "the stalled uploads' files to go")
    # malloc_trim runs a second after the last of them closed.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: status_kib(server.pid, "VmRSS") < 80 * 1024, "RSS to fall", timeout=5)
    after = status_kib(server.pid, "VmRSS")
    print(
        f"RSS idle {idle // 1024} MiB, with 300 stalled uploads: {now // 1024} MiB, "
        f"peak {peak // 1024} MiB, after {after // 1024} MiB"
    )
    # Issue 10's bounds, as absolute figures of the real process. Measured on asyncio: idle 56
    # MiB with pydantic loaded at start-up (45-47 without it, issue 16; libvips, Pillow and
    # botocore are imported only where used), peak 93-99 MiB, after 70-72; uvloop, with crowd
    # connections' receive buffers lowered, peaked at 84.
    assert peak <= 128 * 1024, f"peak RSS {peak // 1024} MiB, idle {idle // 1024} MiB"
    assert after < 80 * 1024, f"RSS after {after // 1024} MiB, idle {idle // 1024} MiB"


def test_an_idle_server_has_not_loaded_libvips_or_pillow(server_factory: StartServer) -> None:
    """Their memory is paid by a process that renders a thumbnail, not by every idle one
    (pyvips and libvips alone are 14 MiB of RSS); the native libraries a module loads are in
    the process's maps."""
    server = server_factory()
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "libpython" in maps or "python" in maps  # the maps name what is loaded
    for library in ("libvips", "PIL/_imaging"):
        assert library not in maps, library


def test_unfinished_1_mb_heads_hold_little_memory(
    server_factory: StartServer, sockets: list[socket.socket]
) -> None:
    """200 connections each sending 127 header lines of 8 kB (what aiohttp's line limits allow)
    and no blank line: issue 10 measured 439 MiB; the 64 KiB head limit answers 431 first."""
    server = server_factory({"REQUEST_HEADER_TIMEOUT": "60"})
    lines = b"".join(b"X-%03d: %s\r\n" % (n, b"a" * 8000) for n in range(127))
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sockets.append(sock)
        with contextlib.suppress(OSError):  # refused and closed after 64 KiB
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + lines)
    wait_until(lambda: bytes_in_transit(server.port) == 0, "the server to read or refuse it all")
    peak = status_kib(server.pid, "VmHWM")
    print(f"RSS peak with 200 unfinished 1 MB heads: {peak // 1024} MiB")
    assert peak <= 128 * 1024
    assert server.logs.count("431") >= 190  # their access lines


def test_a_bucket_server_holds_at_most_its_stated_memory(
    server_factory: StartServer, seaweedfs_server: SeaweedServer
) -> None:
    """STORAGE=s3 with 8 MiB parts: the idle process (ready: its client has written to the
    bucket) fits in the bound's base, 64 MiB; a 1 GiB file streamed in (never whole in this
    test's memory either), then 200 small files sent many at a time, keep the peak RSS within
    the stated bound, 64 MiB + S3_PART_SIZE x parts in flight (``memory_bound``)."""
    bucket = seaweedfs_server.new_bucket()
    part = 8 * MiB
    server = server_factory(
        seaweedfs_server.settings(bucket, S3_PART_SIZE="8MiB", MAX_FILE_SIZE="2GiB")
    )
    wait_until(lambda: _ready(server.url), "the bucket to be writable")  # the client has written
    Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the peak, from now on
    idle = status_kib(server.pid, "VmRSS")
    # The base measured 61.6-63.9 MiB here (of 64): the bound that counts is the peak's below,
    # so a tolerance of 2 MiB keeps the idle figure watched without failing on the allocator.
    assert idle <= PROCESS_MEMORY // 1024 + 2048, f"idle {idle} KiB"
    size = stream_upload(server.port, "large.jpg", 1024 * MiB)
    small = [jpeg_bytes(500_000) for _ in range(200)]
    body = b"".join(upload_part_head(f"s{n}.jpg") + data + b"\r\n" for n, data in enumerate(small))
    body += f"--{BOUNDARY}--\r\n".encode()
    request = urllib.request.Request(
        f"{server.url}/api/upload", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert answer.status == 200
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{error.code} {error.read()!r} {server.logs[-3000:]}") from None
    peak = status_kib(server.pid, "VmHWM")
    bound = memory_bound(part) // 1024  # 64 MiB + 8 MiB x 7 parts in flight = 120 MiB
    print(f"STORAGE=s3 RSS idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} of {bound >> 10} MiB")
    assert peak <= bound, f"idle {idle} KiB, peak {peak} KiB"
    keys = seaweedfs_server.keys(bucket)
    assert len(keys) == 201
    head = seaweedfs_server.client().head_object(Bucket=bucket, Key="large.jpg")
    assert head["ContentLength"] == size == 1024 * MiB


def test_bucket_workers_share_what_the_supervisor_imported(
    server_factory: StartServer, seaweedfs_server: SeaweedServer
) -> None:
    """WORKERS=2, STORAGE=s3: aiobotocore and botocore are imported by the supervisor before it
    forks, and its objects frozen, so each worker shares them instead of holding a copy: at
    least 16 MiB of each worker's written memory is still shared (8.8 MiB when each worker
    imported its own, and its garbage collector wrote into what it inherited)."""
    bucket = seaweedfs_server.new_bucket()
    server = server_factory(seaweedfs_server.settings(bucket), workers=2)
    wait_until(lambda: _ready(server.url), "the bucket to be writable")
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        shared = rollup_kib(pid, "Shared_Dirty")
        assert shared >= 16 * 1024, f"worker {pid} shares {shared} KiB"


def rollup_kib(pid: int, field: str) -> int:
    """A figure of /proc/<pid>/smaps_rollup (``Shared_Dirty``: pages written before the fork
    and still shared), in KiB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, text
    return int(match[1])


def stream_upload(port: int, filename: str, size: int) -> int:
    """POST /api/upload of one JPEG of ``size`` bytes, sent 1 MiB at a time as it is made: its
    size as stored (the answer's sha256 is checked against the bytes sent)."""
    block = os.urandom(MiB)
    head = upload_part_head(filename) + JPEG[:-2]
    tail = b"\xff\xd9\r\n" + f"--{BOUNDARY}--\r\n".encode()
    filler = size - len(JPEG)
    sent = hashlib.sha256(JPEG[:-2])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.putrequest("POST", "/api/upload")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        connection.putheader("Content-Length", str(len(head) + filler + len(tail)))
        connection.endheaders(head)
        while filler:
            chunk = block[: min(filler, MiB)]
            connection.send(chunk)
            sent.update(chunk)
            filler -= len(chunk)
        connection.send(tail)
        sent.update(b"\xff\xd9")
        answer = connection.getresponse()
        text = answer.read()
        assert answer.status == 200, text[:1000]
    finally:
        connection.close()
    (item,) = json.loads(text)["data"]
    assert item["sha256"] == sent.hexdigest()
    return int(item["file_size"])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=30) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError:
        return False


def upload_part_head(filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()


def hold_slow_connections(port: int, count: int, sockets: list[socket.socket]) -> None:
    """``count`` connections sending a request head one byte at a time (a slowloris)."""
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sockets.append(sock)


def trickle(sockets: list[socket.socket]) -> int:
    """One more header byte on each; how many connections are still open."""
    alive = 0
    for sock in sockets:
        try:
            sock.send(b"a")
            alive += 1
        except OSError:
            pass
    return alive


def timed_get(port: int) -> tuple[float, bytes]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return time.monotonic() - started, answer


@pytest.mark.parametrize("max_open_files", [None, 512], ids=["default-limit", "512-files"])
def test_a_normal_client_is_answered_while_1000_slow_ones_are_held(
    server_factory: StartServer,
    sockets: list[socket.socket],
    max_open_files: int | None,
    event_loop_env: dict[str, str],
) -> None:
    server = server_factory(
        {"REQUEST_HEADER_TIMEOUT": "60", **event_loop_env}, max_open_files=max_open_files
    )
    hold_slow_connections(server.port, 1000, sockets)
    latencies = []
    for _ in range(3):
        held = trickle(sockets)
        latency, answer = timed_get(server.port)
        latencies.append(latency)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        time.sleep(0.5)
    print(
        f"slow connections held: {held} of 1000; GET / answered in "
        f"{max(latencies) * 1000:.0f} ms at most"
    )
    assert max(latencies) < 1.0
    if max_open_files is None:
        assert held == 1000  # under MAX_CONNECTIONS, each is held until its head times out
    else:
        assert held < 512  # room is made by closing the longest idle ones
        assert "cannot accept connections" not in server.logs  # EMFILE never reached
        assert "at the connection limit" in server.logs  # said, once per 10 s at most
    assert "Traceback" not in server.logs


def test_an_idle_flood_is_closed_after_the_keepalive_timeout(
    server_factory: StartServer, sockets: list[socket.socket]
) -> None:
    """1,000 connections that never send a byte (issue 10: 2,000 of them were all still open
    after 2 minutes)."""
    server = server_factory({"KEEPALIVE_TIMEOUT": "1"})
    for _ in range(1000):
        sockets.append(socket.create_connection(("127.0.0.1", server.port)))
    started = time.monotonic()
    for sock in sockets:
        sock.settimeout(max(0.1, started + 10 - time.monotonic()))
        assert sock.recv(1) == b""  # closed by the server
    print(f"1,000 idle connections closed {time.monotonic() - started:.1f} s after the last")
    _, answer = timed_get(server.port)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_broken_chunk_mid_upload_is_answered_at_once_and_does_not_hold_up_a_stop(
    server_factory: StartServer, sockets: list[socket.socket]
) -> None:
    """Issue 10: no answer until the client left, and a SIGTERM drain held for the whole
    SHUTDOWN_TIMEOUT."""
    server = server_factory({"SHUTDOWN_TIMEOUT": "30"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sockets.append(sock)
    head = upload_head(server.port, 0, "a.jpg").replace(
        b"Content-Length: 0", b"Transfer-Encoding: chunked"
    )
    start, part = head.split(b"\r\n\r\n", 1)
    first = part + jpeg_bytes(10_000)
    sock.sendall(start + b"\r\n\r\n" + b"%x\r\n" % len(first) + first + b"\r\n")
    wait_until(lambda: bool(temp_files(server.upload_folder)), "the upload to be under way")
    sock.sendall(b"zz-not-a-size\r\n")
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert time.monotonic() - started < 5
    assert temp_files(server.upload_folder) == []
    assert "Traceback" not in server.logs


def test_a_body_trickled_at_1_byte_a_second_is_cut_after_one_window(
    server_factory: StartServer, sockets: list[socket.socket]
) -> None:
    """Issue 10: a body trickled at 1 byte/s was still open after 2 minutes. It never goes
    BODY_IDLE_TIMEOUT without a byte, so only MIN_BODY_RATE (the default, 1 KiB/s) cuts it."""
    server = server_factory({"BODY_IDLE_TIMEOUT": "2"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sockets.append(sock)
    sock.sendall(upload_head(server.port, 10 * MiB, "trickle.jpg") + jpeg_bytes(1000))
    started = time.monotonic()
    answer = b""
    sock.settimeout(1)
    while not answer and time.monotonic() - started < 10:
        with contextlib.suppress(TimeoutError):
            answer = sock.recv(65536)  # a second, then one more byte
        if not answer:
            sock.send(b"\x00")
    elapsed = time.monotonic() - started
    print(f"a body trickled at 1 byte/s answered after {elapsed:.1f} s: {answer[:12]!r}")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"slower than 1024 bytes/s" in answer
    assert 2 <= elapsed < 5
    assert "under MIN_BODY_RATE" in server.logs
    wait_until(lambda: not temp_files(server.upload_folder), "the upload's files to go")


def established_to(port: int) -> int:
    """Open TCP connections whose local port is ``port`` (the server's side of each)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for line in lines
        if int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "01"
    )


def test_a_client_that_stops_reading_a_large_download_is_closed_after_send_timeout(
    server_factory: StartServer, sockets: list[socket.socket], event_loop_env: dict[str, str]
) -> None:
    """A GET of a 32 MiB file from a client that reads nothing: the kernel's buffers fill, the
    client's window is zero, and without SEND_TIMEOUT the connection (and its descriptor and
    file) stayed for as long as the client liked: sendfile(2) waits with no timer of its own."""
    server = server_factory({"SEND_TIMEOUT": "2", **event_loop_env})
    (server.upload_folder / "large.jpg").write_bytes(jpeg_bytes(32 * MiB))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /uploads/large.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    wait_until(lambda: established_to(server.port) == 1, "the download to start")
    started = time.monotonic()
    wait_until(lambda: established_to(server.port) == 0, "the server to close", timeout=20)
    elapsed = time.monotonic() - started
    print(f"a client that stopped reading was closed after {elapsed:.1f} s")
    assert elapsed >= 1.5
    _, answer = timed_get(server.port)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert '"GET /uploads/large.jpg" 200' in server.logs  # its access line, once it ended
    assert "Traceback" not in server.logs


def open_descriptors(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (or reset) ``sock``, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def test_at_the_descriptor_limit_an_upload_is_a_503_and_accept_errors_are_one_line(
    server_factory: StartServer, sockets: list[socket.socket], event_loop_env: dict[str, str]
) -> None:
    """Issue 10: at RLIMIT_NOFILE an upload on an open connection got a 500 (EMFILE creating
    its temporary file) and asyncio logged 25,000 accept tracebacks in 12 s. The server's soft
    limit is lowered (prlimit) to the descriptors it holds, with connections open: then every
    descriptor is taken, the next accept fails, and so does the upload's temporary file.
    asyncio then stops accepting for a second at a time (one log line per 10 s); libuv (uvloop)
    accepts and closes the connections it has no descriptor for, with one it keeps in reserve."""
    on_asyncio = event_loop_env["EVENT_LOOP"] == "asyncio"
    server = server_factory(event_loop_env)
    upload = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sockets.append(upload)
    _, answer = timed_get(server.port)  # the server is warm: its lazy files are open
    assert answer.startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: established_to(server.port) == 1, "the upload's connection only")
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(
        server.pid, resource.RLIMIT_NOFILE, (max(open_descriptors(server.pid)) + 1, hard)
    )
    try:
        flood = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(100)
        ]
        sockets.extend(flood)  # the first fill the holes below the limit, the others find none
        if on_asyncio:  # they wait in the backlog
            server.wait_for_log("cannot accept connections")
        else:
            wait_until(lambda: any(map(closed_by_server, flood)), "libuv to close one")
        body = f"\r\n--{BOUNDARY}--\r\n".encode()
        data = jpeg_bytes(2 * MiB)  # over a write block: the temporary file is created at once
        head = upload_head(server.port, 0, "a.jpg")
        part = head.split(b"\r\n\r\n", 1)[1]
        length = len(part) + len(data) + len(body)
        upload.sendall(upload_head(server.port, length, "a.jpg") + data + body)
        answer = upload.recv(65536)
        time.sleep(2.5)  # asyncio retries the accept every second: two more failures at least
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (hard, hard))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 503 "), answer
    headers, _, body_bytes = rest.partition(b"\r\n\r\n")
    assert b"Retry-After: 1" in headers
    assert b"application/json" in headers
    assert b"too many files open" in body_bytes
    logs = server.logs
    assert logs.count("cannot accept connections") == (1 if on_asyncio else 0), logs  # per 10 s
    assert "Traceback" not in logs
    assert " 500 " not in logs
    for sock in sockets[1:]:
        sock.close()
    # With the limit back, the backlog is accepted and uploads succeed again.
    wait_until(lambda: not temp_files(server.upload_folder), "the refused upload's files to go")
    _, answer = timed_get(server.port)
    assert answer.startswith(b"HTTP/1.1 200 ")
